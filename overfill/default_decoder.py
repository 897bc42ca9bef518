"""The embedded model's default decoder, named `--decoder default` everywhere.

It lives in `$OVERFILL_HOME/decoders/smollm2-135m-default` and is built on first use (`make decoder`), about 12
minutes on a 2-core CPU:
    1) prune SmolLM2-135M with the shipped calibration set: MLP 1536 -> 768 in every layer, hidden size kept
       (94.7M of 134.5M parameters, 70%; a 50% cut of a model this small stays far behind after a CPU-sized training
       run, see docs/results.md);
    2) train it in `overfill` mode (the full model frozen, its KV under the decoder) on the shipped
       self-distillation data, 120 steps of 8 examples.
Both stages keep their work in `smollm2-135m-default.build/`, so an interrupted build resumes where it stopped; the
finished decoder then moves into place in one step, without the optimizer state.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from filelock import FileLock

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.model_loading import EMBEDDED_ALIAS
from overfill.paths import decoders_dir

DEFAULT_DECODER = "default"


@dataclass(frozen=True)
class DefaultDecoderRecipe:
    model: str = EMBEDDED_ALIAS
    data: str | None = None             # None: the shipped self-distillation set
    calibration: str | None = None      # None: the shipped calibration set
    hidden_size: int = 576              # kept: cutting the residual width of a 135M model costs the most quality
    intermediate_size: int = 768        # 1536 -> 768 in every layer
    steps: int = 120                    # ~10 minutes on 2 CPU cores at batch 8
    batch_size: int = 8
    lr: float = 3e-4
    kd_weight: float = 0.0
    seed: int = 0
    save_every: int = 20                # checkpoint steps: what an interrupted build resumes from


RECIPE = DefaultDecoderRecipe()


def default_decoder_dir() -> Path:
    return decoders_dir() / f"{EMBEDDED_ALIAS}-default"


def distillation_data() -> Path:
    """The shipped self-distillation set: the full model's own answers to the shipped prompts (`make-data`)."""
    return Path(str(resources.files("overfill") / "data" / "distill-smollm2-135m.jsonl"))


def ensure_default_decoder(rebuild: bool = False, progress: bool = True,
                           recipe: DefaultDecoderRecipe = RECIPE) -> Path:
    """The default decoder's directory, building it first if it is missing (or if `rebuild`)."""
    from overfill.training.trainer import CHECKPOINT, TrainSpec, train

    path = default_decoder_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    build = path.with_name(path.name + ".build")
    with FileLock(str(path) + ".lock"):
        if is_built_by(path, recipe) and not rebuild:
            return path
        if rebuild:
            shutil.rmtree(build, ignore_errors=True)
        # 1) Prune (skipped when an interrupted build already did).
        pruned = build / "pruned"
        if not (pruned / "overfill.json").is_file():
            build_decoder(PruneSpec(recipe.model, recipe.hidden_size, recipe.intermediate_size, output=pruned,
                                    calibration=recipe.calibration), progress=progress)
        # 2) Train in overfill mode, resuming from the last checkpoint of an interrupted build.
        trained = build / "trained"
        train(TrainSpec(model=recipe.model, decoder=str(pruned), data=recipe.data or str(distillation_data()),
                        mode="overfill",
                        output=str(trained), steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                        kd_weight=recipe.kd_weight, seed=recipe.seed, save_every=recipe.save_every),
              resume=True, progress=progress)
        # 3) Into place: the decoder without its optimizer state.
        (trained / CHECKPOINT).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        trained.rename(path)
        shutil.rmtree(build, ignore_errors=True)
    return path


def is_built_by(path: Path, recipe: DefaultDecoderRecipe) -> bool:
    """Whether `path` holds a decoder this recipe built (an older default, e.g. untrained, is built again)."""
    from overfill.decoder_checkpoint import read_manifest

    if not (path / "overfill.json").is_file():
        return False
    manifest = read_manifest(path)
    trained = [t for t in manifest.training if t.get("mode") == "overfill"]
    return (manifest.hidden_size, manifest.intermediate_size) == (recipe.hidden_size, recipe.intermediate_size) \
        and len(trained) == 1 and trained[0].get("steps") == recipe.steps and trained[0].get("lr") == recipe.lr \
        and trained[0].get("kd_weight") == recipe.kd_weight


def resolve_decoder(decoder: str, model: str) -> Path:
    """A --decoder argument -> directory. `default` exists for the embedded model only."""
    if decoder == DEFAULT_DECODER:
        if model != EMBEDDED_ALIAS:
            raise ValueError(f"--decoder default names the default decoder of {EMBEDDED_ALIAS!r}; for {model!r} "
                             "give a decoder directory (make one with `overfill prune`)")
        return ensure_default_decoder()
    path = Path(decoder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"decoder {decoder!r} is not a directory (nor 'default')")
    return path

"""A decoder recipe: prune + reconstruct + train, as one resumable build (`overfill decoder build`, `make decoder`).

    1) prune the full model to the recipe's widths and reconstruct (build_decoder.py, reconstruction.py);
    2) train it in `overfill` mode on the recipe's self-distillation data (training/trainer.py).
Both stages keep their work in `<output>.build/`, so an interrupted build resumes where it stopped; the finished
decoder then moves into place in one step, without the optimizer state. The manifest records the recipe, so a
directory built by another recipe is built again rather than reused.

`recipe_for_fraction` turns a parameter fraction of the full model into widths: the MLP is cut first (the residual
width costs the most quality per parameter, see docs/results.md), down to `MIN_MLP_SHARE` of its width; past that
the residual width shrinks too.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import torch
from filelock import FileLock

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.calibration import default_calibration_path
from overfill.decoder_checkpoint import read_manifest, write_manifest
from overfill.model_loading import EMBEDDED_ALIAS
from overfill.pruning import pruned_config

MIN_MLP_SHARE = 0.45  # below this share of its width, the MLP stops being the only thing cut


@dataclass(frozen=True)
class DecoderRecipe:
    model: str = EMBEDDED_ALIAS
    hidden_size: int = 576
    intermediate_size: int = 768
    reconstruct: str = "lstsq"
    ridge: float = 1e-2
    calibration: tuple[str, ...] | None = None  # None: the shipped calibration set and the training data
    calibration_samples: int | None = 640       # the first N calibration samples (None: all): reconstruction's cost
    data: str | None = None                     # None: the shipped self-distillation set
    steps: int = 128                            # bf16 on this CPU: the time 80 float32 steps took
    batch_size: int = 8
    lr: float = 3e-4
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    trainable: str = "all"
    precision: str = "auto"                     # training: bf16 where the hardware has it (training/precision.py)
    seed: int = 0
    save_every: int = 20                        # checkpoint steps: what an interrupted build resumes from

    @property
    def identity(self) -> dict:
        """What makes two builds the same decoder (everything but how often it checkpoints), as the manifest's JSON
        holds it."""
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k != "save_every"}))


def distillation_data() -> Path:
    """The shipped self-distillation set: the full model's own answers to the shipped prompts (`make-data`)."""
    return Path(str(resources.files("overfill") / "data" / "distill-smollm2-135m.jsonl"))


def build_from_recipe(recipe: DecoderRecipe, output: Path, rebuild: bool = False, progress: bool = True) -> Path:
    """The decoder `recipe` describes, in `output`: built (or resumed) unless `output` already holds it."""
    from overfill.training.trainer import CHECKPOINT, train

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    build = output.with_name(output.name + ".build")
    with FileLock(str(output) + ".lock"):
        if is_built_by(output, recipe) and not rebuild:
            return output
        if rebuild:
            shutil.rmtree(build, ignore_errors=True)
        # 1) Prune and reconstruct (skipped when an interrupted build already did).
        pruned = build / "pruned"
        if not (pruned / "overfill.json").is_file():
            build_decoder(prune_spec(recipe, pruned), progress=progress)
        # 2) Train in overfill mode, resuming from the last checkpoint of an interrupted build.
        trained = build / "trained"
        train(train_spec(recipe, pruned, trained), resume=True, progress=progress)
        # 3) Into place: the decoder without its optimizer state, its manifest naming the recipe.
        (trained / CHECKPOINT).unlink(missing_ok=True)
        manifest = read_manifest(trained)
        manifest.recipe = recipe.identity
        write_manifest(manifest, trained)
        shutil.rmtree(output, ignore_errors=True)
        trained.rename(output)
        shutil.rmtree(build, ignore_errors=True)
    return output


def prune_spec(recipe: DecoderRecipe, output: Path, reconstruct: str | None = None) -> PruneSpec:
    """The recipe's prune + reconstruct step (`reconstruct` overrides its method), writing `output`."""
    calibration = recipe.calibration or (str(default_calibration_path()), recipe.data or str(distillation_data()))
    return PruneSpec(recipe.model, recipe.hidden_size, recipe.intermediate_size, output=Path(output),
                     calibration=[Path(c) for c in calibration], num_samples=recipe.calibration_samples,
                     reconstruct=reconstruct or recipe.reconstruct, ridge=recipe.ridge)


def train_spec(recipe: DecoderRecipe, decoder: Path, output: Path, mode: str = "overfill"):
    """The recipe's training step: `decoder` trained in `mode` into `output`."""
    from overfill.training.trainer import TrainSpec

    return TrainSpec(model=recipe.model, decoder=str(decoder), data=recipe.data or str(distillation_data()),
                     mode=mode, output=str(output), steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                     kd_weight=recipe.kd_weight, ce_weight=recipe.ce_weight, trainable=recipe.trainable,
                     seed=recipe.seed, save_every=recipe.save_every, precision=recipe.precision)


def is_built_by(path: Path, recipe: DecoderRecipe) -> bool:
    """Whether `path` holds the decoder this recipe builds (one built by another recipe is built again)."""
    if not (Path(path) / "overfill.json").is_file():
        return False
    return read_manifest(path).recipe == recipe.identity


def recipe_for_fraction(full_config, fraction: float, base: DecoderRecipe = DecoderRecipe()) -> DecoderRecipe:
    """`base` with the widths of a decoder of at most `fraction` of the full model's parameters: the widest residual
    width (in the steps transformers accepts, multiples of the query heads) at which the widest MLP that fits keeps
    at least MIN_MLP_SHARE of its width, scaled by how much of the residual width is kept."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    full_hidden, full_mlp = full_config.hidden_size, full_config.intermediate_size
    budget = fraction * count_parameters(full_config, full_hidden, full_mlp)
    for hidden in range(full_hidden, 0, -full_config.num_attention_heads):
        # From widths 1 and 2, not 0 (a zero-width MLP makes torch warn about zero-element tensors).
        one_channel = count_parameters(full_config, hidden, 1)
        per_mlp_channel = count_parameters(full_config, hidden, 2) - one_channel
        fixed = one_channel - per_mlp_channel
        mlp = min(full_mlp, int((budget - fixed) // per_mlp_channel))
        if mlp >= max(1, math.ceil(MIN_MLP_SHARE * full_mlp * hidden / full_hidden)):
            return replace(base, hidden_size=hidden, intermediate_size=mlp)
    raise ValueError(f"no decoder of this architecture has at most {fraction:.0%} of its parameters")


def count_parameters(full_config, hidden_size: int, intermediate_size: int) -> int:
    """Parameters of the decoder with these widths, counted on a model built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    config = pruned_config(full_config, hidden_size, intermediate_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())

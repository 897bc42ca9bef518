"""The embedded model's default decoder, named `--decoder default` everywhere.

It lives in `$OVERFILL_HOME/decoders/smollm2-135m-default` and is built on first use by pruning SmolLM2-135M to
about half its parameters with the shipped calibration set. Training (`overfill train`) may later replace it with a
trained decoder under the same name.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.model_loading import EMBEDDED_ALIAS
from overfill.paths import decoders_dir

DEFAULT_DECODER = "default"
# SmolLM2-135M: D 576 -> 360 (a multiple of its 9 query heads), I 1536 -> 1024: 67.5M of 134.5M parameters (50%).
DEFAULT_HIDDEN_SIZE = 360
DEFAULT_INTERMEDIATE_SIZE = 1024


def default_decoder_dir() -> Path:
    return decoders_dir() / f"{EMBEDDED_ALIAS}-default"


def ensure_default_decoder(rebuild: bool = False, progress: bool = True) -> Path:
    """The default decoder's directory, pruning it first if it is missing (or if `rebuild`)."""
    path = default_decoder_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if rebuild or not (path / "overfill.json").is_file():
            build_decoder(
                PruneSpec(EMBEDDED_ALIAS, DEFAULT_HIDDEN_SIZE, DEFAULT_INTERMEDIATE_SIZE, output=path),
                progress=progress,
            )
    return path


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

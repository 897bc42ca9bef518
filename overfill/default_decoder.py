"""The embedded model's default decoder, named `--decoder default` everywhere.

It lives in `$OVERFILL_HOME/decoders/smollm2-135m-default` and is built on first use (`make decoder`) from
`DEFAULT_RECIPE` (decoder_recipe.py: prune, reconstruct, train; resumable). Its widths and training were chosen by
measurement as the best decoder a 2-core CPU builds in at most 20 minutes (docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

from overfill.decoder_recipe import DecoderRecipe, build_from_recipe
from overfill.model_loading import EMBEDDED_ALIAS
from overfill.paths import decoders_dir

DEFAULT_DECODER = "default"
DEFAULT_RECIPE = DecoderRecipe()


def default_decoder_dir() -> Path:
    return decoders_dir() / f"{EMBEDDED_ALIAS}-default"


def ensure_default_decoder(rebuild: bool = False, progress: bool = True,
                           recipe: DecoderRecipe = DEFAULT_RECIPE) -> Path:
    """The default decoder's directory, building it first if it is missing, built by another recipe, or `rebuild`."""
    return build_from_recipe(recipe, default_decoder_dir(), rebuild=rebuild, progress=progress)


def resolve_decoder(decoder: str, model: str) -> Path:
    """A --decoder argument -> directory. `default` exists for the embedded model only."""
    if decoder == DEFAULT_DECODER:
        if model != EMBEDDED_ALIAS:
            raise ValueError(f"--decoder default names the default decoder of {EMBEDDED_ALIAS!r}; for {model!r} "
                             "give a decoder directory (make one with `overfill prune` or `overfill decoder build`)")
        return ensure_default_decoder()
    path = Path(decoder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"decoder {decoder!r} is not a directory (nor 'default')")
    return path

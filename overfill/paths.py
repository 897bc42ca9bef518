"""Where OverFill keeps what it builds: converted models and decoders under one cache directory.

`$OVERFILL_HOME` (default `~/.cache/overfill`):
    models/<alias>/            the embedded model converted once from GGUF to a plain Hugging Face directory
    decoders/<alias>-default/  the embedded model's default decoder (`--decoder default`)
"""

import os
from pathlib import Path


def overfill_home() -> Path:
    return Path(os.environ.get("OVERFILL_HOME", Path.home() / ".cache" / "overfill")).expanduser()


def models_dir() -> Path:
    return overfill_home() / "models"


def decoders_dir() -> Path:
    return overfill_home() / "decoders"

"""A decoder checkpoint: a plain Hugging Face directory plus `overfill.json`, which ties it to its full model.

`overfill.json` records which full model the decoder was cut from (what the user named, a fingerprint of its config
and one of its weights, its KV geometry), the kept channel indices, sizes, and calibration and training provenance.
Loading a decoder next to any other full model is refused before any weights are read (docs/architecture.md,
"Invariants").
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from overfill import __version__
from overfill.geometry import KVGeometry, check_same_geometry, config_fingerprint, weights_fingerprint
from overfill.model_loading import check_supported, resolve_dtype
from overfill.pruning import KeptChannels

MANIFEST_NAME = "overfill.json"
FORMAT_VERSION = 1


class DecoderMismatchError(ValueError):
    """The decoder belongs to a different full model."""


@dataclass
class FullModelRef:
    source: str                  # what the user named: a directory or an alias
    config_fingerprint: str
    weights_fingerprint: str
    geometry: dict
    hidden_size: int
    intermediate_size: int
    num_parameters: int

    @classmethod
    def of(cls, model: torch.nn.Module, source: str) -> FullModelRef:
        config = model.config
        return cls(
            source=source,
            config_fingerprint=config_fingerprint(config),
            weights_fingerprint=weights_fingerprint(model),
            geometry=KVGeometry.from_config(config).to_dict(),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_parameters=sum(p.numel() for p in model.parameters()),
        )


@dataclass
class DecoderManifest:
    full_model: FullModelRef
    hidden_size: int
    intermediate_size: int
    num_parameters: int
    kept_hidden: list[int]
    kept_mlp: list[list[int]]
    calibration: dict                      # sources, sha256, num_samples, num_tokens, max_length
    reconstruction: dict = field(default_factory=dict)  # method, ridge, tokens, per-layer error (reconstruction.py)
    training: list[dict] = field(default_factory=list)  # one entry per training run, oldest first
    recipe: dict | None = None             # the DecoderRecipe that built it (decoder_recipe.py), if one did
    format_version: int = FORMAT_VERSION
    overfill_version: str = __version__
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def kept(self) -> KeptChannels:
        return KeptChannels(hidden=self.kept_hidden, mlp=self.kept_mlp)

    @property
    def parameter_fraction(self) -> float:
        return self.num_parameters / self.full_model.num_parameters

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> DecoderManifest:
        data = dict(data)
        data["full_model"] = FullModelRef(**data["full_model"])
        return cls(**data)


def save_decoder(model: torch.nn.Module, tokenizer, manifest: DecoderManifest, output: str | Path) -> Path:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return write_manifest(manifest, output)


def write_manifest(manifest: DecoderManifest, output: str | Path) -> Path:
    (Path(output) / MANIFEST_NAME).write_text(manifest.to_json())
    return Path(output)


def read_manifest(decoder_dir: str | Path) -> DecoderManifest:
    path = Path(decoder_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DecoderMismatchError(
            f"{decoder_dir} is not an OverFill decoder: it has no {MANIFEST_NAME} saying which full model it belongs "
            "to (make one with `overfill prune`)"
        )
    try:
        return DecoderManifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise DecoderMismatchError(f"{path} is not a valid decoder manifest: {e}") from e


def check_decoder_fits(decoder_dir: str | Path, full_config, full_model: torch.nn.Module | None = None) -> DecoderManifest:
    """Refuse a decoder whose KV geometry or recorded full model differs from this full model. Reads configs and
    the manifest only (and the full model's weights for their fingerprint when given), never the decoder's weights."""
    from transformers import AutoConfig

    manifest = read_manifest(decoder_dir)
    decoder_config = AutoConfig.from_pretrained(decoder_dir)
    check_supported(decoder_config)
    check_same_geometry(KVGeometry.from_config(full_config), KVGeometry.from_config(decoder_config))
    recorded = manifest.full_model
    if recorded.config_fingerprint != config_fingerprint(full_config):
        raise DecoderMismatchError(
            f"decoder {decoder_dir} was cut from full model {recorded.source!r} (config {recorded.config_fingerprint[:12]}), "
            f"not from this one (config {config_fingerprint(full_config)[:12]})"
        )
    if full_model is not None:
        actual = weights_fingerprint(full_model)
        if recorded.weights_fingerprint != actual:
            raise DecoderMismatchError(
                f"decoder {decoder_dir} was cut from full model {recorded.source!r} (weights "
                f"{recorded.weights_fingerprint[:12]}); this full model has the same architecture but other weights "
                f"({actual[:12]})"
            )
    return manifest


def load_decoder(decoder_dir: str | Path, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu"):
    """The decoder's Hugging Face model (eval mode). Call `check_decoder_fits` first."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=resolve_dtype(dtype, device))
    return model.to(device).eval()


"""What a full model and its decoder must share (the KV geometry), and a cheap fingerprint of a model.

The decoder attends to KV written by the full model, so both must agree on everything that shapes or positions a
KV entry: layers, KV heads, head_dim, RoPE, and (for the tokens) the vocabulary. Query heads are part of it too
because the attention computation (GQA grouping) must match what the full model was trained with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from overfill.model_loading import rope_parameters


@dataclass(frozen=True)
class KVGeometry:
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rope: str  # canonical JSON of the RoPE parameters
    sliding_window: int | None

    @classmethod
    def from_config(cls, config) -> KVGeometry:
        return cls(
            num_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=head_dim_of(config),
            vocab_size=config.vocab_size,
            rope=json.dumps(rope_parameters(config), sort_keys=True),
            sliding_window=sliding_window_of(config),
        )

    def describe(self) -> str:
        return (
            f"layers={self.num_layers} q_heads={self.num_attention_heads} kv_heads={self.num_kv_heads} "
            f"head_dim={self.head_dim} vocab={self.vocab_size} rope={self.rope} sliding_window={self.sliding_window}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_window_of(config) -> int | None:
    """Mistral applies its window to every layer; the Qwen families are refused with windows (model_loading)."""
    if config.model_type == "mistral":
        return getattr(config, "sliding_window", None)
    return None


class GeometryMismatchError(ValueError):
    """A decoder cannot run on this full model's KV cache."""


def check_same_geometry(full: KVGeometry, decoder: KVGeometry) -> None:
    if full != decoder:
        raise GeometryMismatchError(
            "decoder KV geometry differs from the full model's:\n"
            f"  full model: {full.describe()}\n"
            f"  decoder:    {decoder.describe()}"
        )


# ---- fingerprints -----------------------------------------------------------------------------------------------

_CONFIG_KEYS_IGNORED = {"_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"}
_SAMPLES_PER_TENSOR = 4096


def config_fingerprint(config) -> str:
    """sha256 of the config's architecture fields (dtype and bookkeeping fields left out)."""
    fields = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name, shape and an evenly strided sample of its values rounded to bfloat16.

    Rounding to bfloat16 makes a float32 and a bfloat16 load of the same checkpoint agree; sampling keeps the cost
    at milliseconds even for 8B models while any retraining or different checkpoint changes the hash.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].to("cpu", torch.float32).to(torch.bfloat16)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()

"""Width pruning as a transformation: full model + kept channels -> a smaller model of the same architecture.

The decoder keeps every layer, query head, KV head, head_dim, RoPE setting and the vocabulary (so its KV cache has the
full model's geometry) and cuts the residual width D to D' (one global channel set `m`) and the MLP width I to I'
(one set `mi` per layer, the same count in every layer). Slicing, kept channels in their original order
(reconstruction.py may then re-fit the sliced weights):

    embed_tokens, lm_head        [V, D]        -> [:, m]
    every RMSNorm weight         [D]           -> [m]
    q_proj, k_proj, v_proj       [out, D]      -> [:, m]       (biases unchanged)
    o_proj                       [D, Hq hd]    -> [m, :]       (bias [m])
    gate_proj, up_proj           [I, D]        -> [mi][:, m]   (bias [mi])
    down_proj                    [D, I]        -> [m][:, mi]   (bias [m])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from overfill.calibration import Importance
from overfill.geometry import head_dim_of


class PruneSizeError(ValueError):
    """Requested decoder sizes are out of range or refused by transformers."""


@dataclass(frozen=True)
class KeptChannels:
    hidden: list[int]       # D' indices into [0, D), ascending
    mlp: list[list[int]]    # per layer, I' indices into [0, I), ascending


def check_sizes(config, hidden_size: int, intermediate_size: int) -> None:
    """Refuse sizes out of range, and hidden sizes transformers refuses (hidden % num_attention_heads != 0, which
    transformers 5.x checks even with head_dim explicit), naming the nearest accepted ones."""
    if not 0 < hidden_size <= config.hidden_size:
        raise PruneSizeError(f"hidden_size must be in [1, {config.hidden_size}], got {hidden_size}")
    if not 0 < intermediate_size <= config.intermediate_size:
        raise PruneSizeError(f"intermediate_size must be in [1, {config.intermediate_size}], got {intermediate_size}")
    heads = config.num_attention_heads
    if hidden_size % heads:
        below, above = hidden_size // heads * heads, (hidden_size // heads + 1) * heads
        nearest = [s for s in (below, above) if 0 < s <= config.hidden_size]
        raise PruneSizeError(
            f"hidden_size {hidden_size} is refused by transformers: it must be a multiple of num_attention_heads "
            f"({heads}); nearest accepted: {' or '.join(map(str, nearest))}"
        )


def select_hidden(importance: Importance, hidden_size: int) -> list[int]:
    """The `hidden_size` most important residual channels, in their original order."""
    return importance.hidden.topk(hidden_size).indices.sort().values.tolist()


def pruned_config(config, hidden_size: int, intermediate_size: int):
    """The decoder's config: the full model's with the two widths changed and head_dim made explicit."""
    new = copy.deepcopy(config)
    new.head_dim = head_dim_of(config)
    new.hidden_size = hidden_size
    new.intermediate_size = intermediate_size
    return new


@torch.no_grad()
def prune_state_dict(model: torch.nn.Module, kept: KeptChannels) -> dict[str, torch.Tensor]:
    """Slice every tensor of `model` as the table in the module docstring says; returns new contiguous tensors."""
    device = next(model.parameters()).device
    m = torch.tensor(kept.hidden, device=device)
    pruned: dict[str, torch.Tensor] = {}
    inner = model.model
    pruned["model.embed_tokens.weight"] = inner.embed_tokens.weight[:, m]
    pruned["model.norm.weight"] = inner.norm.weight[m]
    if not model.config.tie_word_embeddings:
        pruned["lm_head.weight"] = model.lm_head.weight[:, m]
    for index, layer in enumerate(inner.layers):
        mi = torch.tensor(kept.mlp[index], device=device)
        prefix = f"model.layers.{index}."
        attn, mlp = layer.self_attn, layer.mlp
        pruned[prefix + "input_layernorm.weight"] = layer.input_layernorm.weight[m]
        pruned[prefix + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight[m]
        for name in ("q_proj", "k_proj", "v_proj"):
            linear = getattr(attn, name)
            pruned[prefix + f"self_attn.{name}.weight"] = linear.weight[:, m]
            if linear.bias is not None:
                pruned[prefix + f"self_attn.{name}.bias"] = linear.bias
        pruned[prefix + "self_attn.o_proj.weight"] = attn.o_proj.weight[m, :]
        if attn.o_proj.bias is not None:
            pruned[prefix + "self_attn.o_proj.bias"] = attn.o_proj.bias[m]
        for name in ("q_norm", "k_norm"):
            if hasattr(attn, name):
                pruned[prefix + f"self_attn.{name}.weight"] = getattr(attn, name).weight
        for name in ("gate_proj", "up_proj"):
            linear = getattr(mlp, name)
            pruned[prefix + f"mlp.{name}.weight"] = linear.weight[mi][:, m]
            if linear.bias is not None:
                pruned[prefix + f"mlp.{name}.bias"] = linear.bias[mi]
        pruned[prefix + "mlp.down_proj.weight"] = mlp.down_proj.weight[m][:, mi]
        if mlp.down_proj.bias is not None:
            pruned[prefix + "mlp.down_proj.bias"] = mlp.down_proj.bias[m]
    return {name: tensor.detach().clone().contiguous() for name, tensor in pruned.items()}


def prune_model(model: torch.nn.Module, kept: KeptChannels) -> torch.nn.Module:
    """A new model of the same class holding the sliced weights (same dtype and device), in eval mode."""
    config = pruned_config(model.config, len(kept.hidden), len(kept.mlp[0]))
    if any(len(row) != len(kept.mlp[0]) for row in kept.mlp) or len(kept.mlp) != config.num_hidden_layers:
        raise ValueError("kept MLP channels must list the same count for every layer")
    device = next(model.parameters()).device
    with torch.device("meta"):
        decoder = type(model)(config)
    decoder.load_state_dict(prune_state_dict(model, kept), strict=False, assign=True)
    if config.tie_word_embeddings:
        decoder.lm_head.weight = decoder.model.embed_tokens.weight
    # Non-persistent buffers (the rotary inverse frequencies) are not in any state dict: rebuild them for real.
    decoder.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    still_meta = [name for name, t in [*decoder.named_parameters(), *decoder.named_buffers()] if t.is_meta]
    assert not still_meta, f"pruned model left tensors unset: {still_meta}"
    decoder.generation_config = copy.deepcopy(model.generation_config)
    return decoder.eval()


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

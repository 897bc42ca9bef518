"""The forward pass of a Llama-family model (Llama, Mistral, Qwen2, Qwen3) over the slot KV cache.

`ModelRunner` takes the weights out of a Hugging Face model once (q/k/v and gate/up fused into one matmul each) and
runs the transformer with plain tensor ops, reading and writing `KVCache` directly, so a decode step does no
allocation that grows with the context and no Python work that grows with it either. The same `forward` serves
prefill (many tokens per row, right padded), decode (one token per row) and continuing a sequence written by another
model of the same KV geometry, which is all OverFill needs: the decoder simply keeps appending to the slot the full
model filled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from overfill.engine.kv_cache import KVCache
from overfill.engine.linear import Linear, make_linear
from overfill.geometry import KVGeometry, head_dim_of


# store_and_read(k, v) -> (keys, values): how a layer writes its new K/V and reads back what it attends to.
KVAccess = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor        # [D]
    qkv: Linear                    # [B, T, D] -> [B, T, (Hq + 2 Hkv) hd]  (q, k, v fused, biases included)
    q_norm: torch.Tensor | None    # [hd] (Qwen3)
    k_norm: torch.Tensor | None    # [hd] (Qwen3)
    o: Linear                      # [B, T, Hq hd] -> [B, T, D]
    mlp_norm: torch.Tensor         # [D]
    gate_up: Linear                # [B, T, D] -> [B, T, 2 I]  (gate, up fused)
    down: Linear                   # [B, T, I] -> [B, T, D]


class ModelRunner:
    """One model's weights plus its forward over a `KVCache`. Inference only (no autograd)."""

    def __init__(self, hf_model: torch.nn.Module, prepack: bool = True):
        config = hf_model.config
        self.config = config
        self.geometry = KVGeometry.from_config(config)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or config.num_attention_heads
        self.head_dim = head_dim_of(config)
        self.eps = config.rms_norm_eps
        self.sliding_window = self.geometry.sliding_window
        self.act = ACT2FN[config.hidden_act]
        self.scale = self.head_dim ** -0.5
        self.dtype = next(hf_model.parameters()).dtype
        self.device = next(hf_model.parameters()).device

        inner = hf_model.model
        self.embed = inner.embed_tokens.weight.detach()                       # [V, D]
        self.final_norm = inner.norm.weight.detach()                          # [D]
        self.lm_head = make_linear(hf_model.lm_head.weight.detach(), prepack=prepack)  # [B, D] -> [B, V]
        self.layers = [self._layer_weights(layer, prepack) for layer in inner.layers]
        self.num_parameters = sum(p.numel() for p in hf_model.parameters())
        self.weight_bytes = sum(p.numel() * p.element_size() for p in hf_model.parameters())
        self._rotary = inner.rotary_emb
        self._cos = self._sin = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)

    @staticmethod
    def _layer_weights(layer, prepack: bool) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp

        def fused(*linears: torch.nn.Linear) -> Linear:
            weight = torch.cat([lin.weight for lin in linears]).detach()
            biases = [lin.bias for lin in linears]
            bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else torch.zeros_like(lin.weight[:, 0]) for b, lin in zip(biases, linears)]
            ).detach()
            return make_linear(weight, bias, prepack)

        return LayerWeights(
            attn_norm=layer.input_layernorm.weight.detach(),
            qkv=fused(attn.q_proj, attn.k_proj, attn.v_proj),
            q_norm=attn.q_norm.weight.detach() if hasattr(attn, "q_norm") else None,
            k_norm=attn.k_norm.weight.detach() if hasattr(attn, "k_norm") else None,
            o=fused(attn.o_proj),
            mlp_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=fused(mlp.gate_proj, mlp.up_proj),
            down=fused(mlp.down_proj),
        )

    # ---- small pieces -------------------------------------------------------------------------------------------

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """As Hugging Face's RMSNorm: normalise in float32, cast back, then scale. (Spelled out: on CPU the fused
        `F.rms_norm` costs 30 us a call, ten times these four ops.)"""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * normed.to(x.dtype)

    def _rope_tables(self, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for positions [0, max_position): each [P, hd], from the model's own rotary module."""
        if self._cos.shape[0] < max_position:
            size = max(max_position, 2 * self._cos.shape[0], 256)
            positions = torch.arange(size, device=self.device)[None]
            probe = torch.empty(0, dtype=self.dtype, device=self.device)
            cos, sin = self._rotary(probe, positions)  # [1, P, hd] each
            half = self.head_dim // 2
            self._cos, self._sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        return self._cos, self._sin

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """RoPE in Hugging Face's half-split form, x * cos + rotate_half(x) * sin, with rotate_half's sign folded
        into the table: x: [B, T, H, hd]; cos, signed_sin: [B, T, 1, hd] (signed_sin = [-sin_1, sin_2])."""
        half = x.shape[-1] // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin

    # ---- the forward ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, cache: KVCache, slots: list[int], input_ids: torch.Tensor, num_new: list[int] | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """Run `input_ids` [B, T] (row b's first num_new[b] tokens valid, right padded) after each slot's current KV.

        Appends the new K/V to the slots and returns logits (float32) at each row's last valid token, [B, V];
        with `all_logits`, logits at every position, [B, T, V].
        """
        num_rows, num_tokens = input_ids.shape
        num_new = num_new or [num_tokens] * num_rows
        starts = [cache.reserve(slot, n) for slot, n in zip(slots, num_new)]
        ends = [s + n for s, n in zip(starts, num_new)]
        kv_len = max(ends)
        decoding = num_tokens == 1

        # 1) Positions and their rotary tables.
        # positions: [B, T]
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(num_tokens, device=self.device)
        cos_table, sin_table = self._rope_tables(kv_len + num_tokens)
        cos, sin = cos_table[positions][:, :, None], sin_table[positions][:, :, None]  # [B, T, 1, hd]

        # 2) Attention mask over [0, kv_len): causal, each row's own length, optional sliding window.
        mask = self._attention_mask(positions, ends, kv_len, same_length=len(set(ends)) == 1 and decoding)
        selector = cache.selector(slots)
        slot_index = torch.tensor(slots, device=self.device) if decoding else None
        pos_index = positions[:, 0] if decoding else None

        # 3) The layers: each writes its new K/V into the slots, then attends to [0, kv_len) of them.
        x = self.embed[input_ids]  # [B, T, D]
        for index, w in enumerate(self.layers):
            def store_and_read(k: torch.Tensor, v: torch.Tensor, index: int = index):
                if decoding:
                    cache.write_decode(index, slot_index, pos_index, k, v)
                else:
                    cache.write_prefill(index, slots, starts, num_new, k, v)
                return cache.read(index, selector, kv_len)  # [B, Hkv, kv_len, hd] each

            x = self.layer(w, x, cos, sin, mask, store_and_read)
        cache.advance(slots, num_new)

        # 4) Logits at the last valid token of each row (or everywhere).
        if not all_logits:
            last = torch.tensor(num_new, device=self.device) - 1
            x = x[torch.arange(num_rows, device=self.device), last]  # [B, D]
        return self.lm_head(self._rms_norm(x, self.final_norm)).float()

    def layer(self, w: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              mask: torch.Tensor | None, store_and_read: KVAccess) -> torch.Tensor:
        """One transformer layer on x: [B, T, D] -> [B, T, D]. cos, sin: [B, T, 1, hd]; mask: [B, 1, T, K] (True =
        attend) or None; `store_and_read(k, v)` stores the new k, v ([B, Hkv, T, hd]) and returns the K keys and
        values to attend to ([B, Hkv, K, hd] each). Shared by `forward` and the CUDA-graph step (cuda_graphs.py)."""
        num_rows, num_tokens = x.shape[:2]
        num_qk_heads = self.num_heads + self.num_kv_heads
        h = self._rms_norm(x, w.attn_norm)
        qkv = w.qkv(h).view(num_rows, num_tokens, num_qk_heads + self.num_kv_heads, self.head_dim)  # [B, T, Hq+2Hkv, hd]
        qk, v = qkv[:, :, :num_qk_heads], qkv[:, :, num_qk_heads:]
        if w.q_norm is not None:
            qk = torch.cat((self._rms_norm(qk[:, :, :self.num_heads], w.q_norm),
                            self._rms_norm(qk[:, :, self.num_heads:], w.k_norm)), dim=2)
        qk = self._rotate(qk, cos, sin).transpose(1, 2)  # [B, Hq + Hkv, T, hd]
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]  # [B, Hq, T, hd], [B, Hkv, T, hd]
        keys, values = store_and_read(k, v.transpose(1, 2))  # [B, Hkv, K, hd] each
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale,
                                              enable_gqa=self.num_heads != self.num_kv_heads)  # [B, Hq, T, hd]
        x = x + w.o(attn.transpose(1, 2).reshape(num_rows, num_tokens, self.num_heads * self.head_dim))
        h = self._rms_norm(x, w.mlp_norm)
        gate, up = w.gate_up(h).chunk(2, dim=-1)  # [B, T, I] each
        return x + w.down(self.act(gate) * up)

    def _attention_mask(self, positions: torch.Tensor, ends: list[int], kv_len: int,
                        same_length: bool) -> torch.Tensor | None:
        """Boolean [B, 1, T, kv_len] (True = attend), or None when every key in [0, kv_len) is visible to every
        query (decode steps of equal-length rows without a sliding window)."""
        if same_length and (self.sliding_window is None or kv_len <= self.sliding_window):
            return None
        keys = torch.arange(kv_len, device=self.device)  # [K]
        query_pos = positions[:, None, :, None]  # [B, 1, T, 1]
        mask = keys <= query_pos
        mask = mask & (keys < torch.tensor(ends, device=self.device)[:, None, None, None])
        if self.sliding_window is not None:
            mask = mask & (keys > query_pos - self.sliding_window)
        return mask

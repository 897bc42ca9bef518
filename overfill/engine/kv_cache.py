"""The KV cache: a fixed pool of sequence slots, allocated once, shared by the full model and the decoder.

Layout (one tensor each for K and V, allocated once and never reallocated):

    k, v: [num_layers, num_slots, num_kv_heads, max_seq_len, head_dim]   i.e. (L, S, H, T, D)

A sequence owns one slot; `lengths[slot]` is how many positions of it hold valid KV (positions 0..length-1; the
token at position p is always stored at index p, so a slot's prompt starts at index 0). Writes go straight into
the preallocated tensors; reading a batch of slots is a view when the slots are consecutive (the allocator hands
out the lowest free slots, so in-process batches always are) and a gather otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from overfill.engine.slots import CacheFullError, SlotPool
from overfill.geometry import KVGeometry

__all__ = ["CacheFullError", "CacheSpec", "KVCache"]


@dataclass(frozen=True)
class CacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_slots: int
    max_seq_len: int
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    @classmethod
    def for_geometry(cls, geometry: KVGeometry, num_slots: int, max_seq_len: int, dtype, device) -> CacheSpec:
        return cls(geometry.num_layers, geometry.num_kv_heads, geometry.head_dim, num_slots, max_seq_len, dtype,
                   str(device))

    @property
    def bytes_per_token(self) -> int:
        """K and V bytes one token takes across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


class KVCache:
    """Slot-based KV storage with per-slot lengths. Not thread-safe: one engine owns it. Its accounting (free slots,
    lengths) is `pool`, a `SlotPool`, which a scheduler may drive directly."""

    def __init__(self, spec: CacheSpec):
        self.spec = spec
        shape = (spec.num_layers, spec.num_slots, spec.num_kv_heads, spec.max_seq_len, spec.head_dim)
        self.k = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        self.v = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        self.pool = SlotPool(spec.num_slots, spec.max_seq_len)

    # ---- slot accounting (the pool's) -------------------------------------------------------------------------

    @property
    def lengths(self) -> list[int]:
        """Valid positions per slot (Python ints: read on the host every step)."""
        return self.pool.lengths

    @property
    def num_free_slots(self) -> int:
        return self.pool.num_free

    @property
    def num_used_slots(self) -> int:
        return self.pool.num_used

    def allocate(self, num: int) -> list[int]:
        return self.pool.allocate(num)

    def free(self, slots: list[int]) -> None:
        self.pool.free(slots)

    def reserve(self, slot: int, num_new: int) -> int:
        """Check that `num_new` more tokens fit in `slot`; returns the position the first of them gets."""
        return self.pool.reserve(slot, num_new)

    # ---- per-layer reads and writes (the hot path) ------------------------------------------------------------

    def selector(self, slots: list[int]) -> slice | torch.Tensor:
        """How to pick `slots` out of the slot dimension: a slice (a view) when consecutive, else an index tensor."""
        first = slots[0]
        if all(b - a == 1 for a, b in zip(slots, slots[1:])):
            return slice(first, first + len(slots))
        return torch.tensor(slots, device=self.k.device)

    def write_decode(self, layer: int, slot_index: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> None:
        """One new position per row. k, v: [B, H, 1, D]; slot_index, positions: [B]. One indexed write per tensor."""
        # self.k[layer][slot_index, :, positions]: [B, H, D]
        self.k[layer][slot_index, :, positions] = k[:, :, 0]
        self.v[layer][slot_index, :, positions] = v[:, :, 0]

    def write_prefill(self, layer: int, slots: list[int], starts: list[int], num_new: list[int], k: torch.Tensor,
                      v: torch.Tensor) -> None:
        """Several positions per row. k, v: [B, H, T, D]; row b's first num_new[b] go to starts[b]...; padding never
        lands in the cache."""
        for row, (slot, start, n) in enumerate(zip(slots, starts, num_new)):
            self.k[layer, slot, :, start:start + n] = k[row, :, :n]
            self.v[layer, slot, :, start:start + n] = v[row, :, :n]

    def read(self, layer: int, selector: slice | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of one layer for the selected slots, positions [0, length): each [B, H, length, D]."""
        return self.k[layer, selector, :, :length], self.v[layer, selector, :, :length]

    def advance(self, slots: list[int], num_new: list[int]) -> None:
        self.pool.advance(slots, num_new)

    # ---- whole-sequence export / import (KV transfer between processes) ---------------------------------------

    def export_slot(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of a slot's valid KV: k, v each [L, H, length, D], contiguous."""
        n = self.lengths[slot]
        return self.k[:, slot, :, :n].contiguous(), self.v[:, slot, :, :n].contiguous()

    def import_slot(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Fill an allocated slot with KV from elsewhere: k, v each [L, H, length, D]."""
        n = k.shape[2]
        if n > self.spec.max_seq_len:
            raise CacheFullError(f"imported KV has {n} tokens; max_seq_len is {self.spec.max_seq_len}")
        self.k[:, slot, :, :n] = k
        self.v[:, slot, :, :n] = v
        self.lengths[slot] = n

"""The KV wire format: a sequence's K/V tensors as a header plus byte chunks, and the validating reassembly.

A sequence's KV is k, v: [L, H, T, D] each (layers, KV heads, tokens, head_dim), contiguous, in the cache dtype.
On the wire, K and then V (each [L, H, T, D] contiguous, so layer after layer) are cut into chunks of at most
`chunk_bytes`; few large messages cost far less than one per layer. The receiver checks the header against what it
expects (geometry, dtype, token count, total size), places every chunk by (kind, offset), refuses overlaps and
out-of-range chunks, and refuses a stream that ends before every byte arrived.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
DEFAULT_CHUNK_BYTES = 2 << 20  # 2 MiB: half of gRPC's default 4 MiB message limit
KEY, VALUE = 0, 1


class KVWireError(ValueError):
    """A KV stream that does not match what the receiver expects, or is malformed or incomplete."""


@dataclass(frozen=True)
class KVLayout:
    """Everything that shapes a sequence's KV bytes."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    num_tokens: int

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the K (or V) tensor: [L, H, T, D]."""
        return self.num_layers * self.num_kv_heads * self.num_tokens * self.head_dim * self.element_size

    @property
    def total_bytes(self) -> int:
        return 2 * self.tensor_bytes

    @classmethod
    def of(cls, k: torch.Tensor) -> KVLayout:
        """k: [L, H, T, D]."""
        num_layers, num_kv_heads, num_tokens, head_dim = k.shape
        return cls(num_layers, num_kv_heads, head_dim, DTYPE_NAMES[k.dtype], num_tokens)


def layout_mismatch(actual: KVLayout, expected: KVLayout) -> str | None:
    """The first field where `actual` differs from `expected` (num_tokens only checked when expected sets it)."""
    for name in ("num_layers", "num_kv_heads", "head_dim", "dtype"):
        if getattr(actual, name) != getattr(expected, name):
            return f"{name}={getattr(actual, name)!r}, expected {getattr(expected, name)!r}"
    if expected.num_tokens and actual.num_tokens != expected.num_tokens:
        return f"num_tokens={actual.num_tokens}, expected {expected.num_tokens}"
    return None


@dataclass(frozen=True)
class Chunk:
    kind: int      # KEY or VALUE
    offset: int    # byte offset in the whole K (or V) tensor
    data: bytes | memoryview


def encode_chunks(k: torch.Tensor, v: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
    """k, v: [L, H, T, D] -> chunks of K, then of V. The tensors must stay alive while chunks are used."""
    if k.shape != v.shape or k.dtype != v.dtype:
        raise ValueError(f"K and V differ: {tuple(k.shape)} {k.dtype} vs {tuple(v.shape)} {v.dtype}")
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    for kind, tensor in ((KEY, k), (VALUE, v)):
        raw = memoryview(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())  # [L*H*T*D*size]
        for offset in range(0, len(raw), chunk_bytes):
            yield Chunk(kind, offset, raw[offset:offset + chunk_bytes])


def check_header(expected: KVLayout | None, header: KVLayout, total_bytes: int) -> None:
    """Raise KVWireError unless a sender's header matches what the receiver expects and describes real bytes."""
    problem = layout_mismatch(header, expected) if expected is not None else None
    if problem:
        raise KVWireError(f"KV header: {problem}")
    if header.dtype not in DTYPES:
        raise KVWireError(f"KV header dtype {header.dtype!r} is not one of {', '.join(DTYPES)}")
    if min(header.num_layers, header.num_kv_heads, header.head_dim, header.num_tokens) <= 0:
        raise KVWireError(f"KV header has an empty dimension: {header}")
    if total_bytes != header.total_bytes:
        raise KVWireError(f"KV header total_bytes={total_bytes}, but its geometry makes {header.total_bytes}")


class KVAssembler:
    """Receiver side: check the header against the expected layout, then fill preallocated K/V from chunks."""

    def __init__(self, expected: KVLayout | None, header: KVLayout, total_bytes: int):
        check_header(expected, header, total_bytes)
        self.layout = header
        shape = (header.num_layers, header.num_kv_heads, header.num_tokens, header.head_dim)
        self.k = torch.empty(shape, dtype=DTYPES[header.dtype])  # [L, H, T, D]
        self.v = torch.empty(shape, dtype=DTYPES[header.dtype])
        # Byte views of K and V, written in place; numpy views for single-copy writes from wire buffers.
        self._bytes = {KEY: self.k.view(-1).view(torch.uint8).numpy(), VALUE: self.v.view(-1).view(torch.uint8).numpy()}
        self._received = {KEY: [], VALUE: []}  # (start, end) byte ranges received per tensor
        self.received_bytes = 0

    def add(self, chunk: Chunk) -> None:
        target = self._bytes.get(chunk.kind)
        if target is None:
            raise KVWireError(f"KV chunk kind {chunk.kind} is neither key (0) nor value (1)")
        start, end = chunk.offset, chunk.offset + len(chunk.data)
        if len(chunk.data) == 0 or end > target.size:
            raise KVWireError(f"KV chunk [{start}, {end}) is outside the tensor's {target.size} bytes")
        ranges = self._received[chunk.kind]
        if any(start < r_end and r_start < end for r_start, r_end in ranges):
            raise KVWireError(f"KV chunk [{start}, {end}) overlaps one already received")
        target[start:end] = np.frombuffer(chunk.data, dtype=np.uint8)
        ranges.append((start, end))
        self.received_bytes += end - start

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [L, H, T, D], once every byte arrived (no overlaps were accepted, so a full count means complete)."""
        if self.received_bytes != self.layout.total_bytes:
            raise KVWireError(f"KV stream ended after {self.received_bytes} of {self.layout.total_bytes} bytes")
        return self.k, self.v

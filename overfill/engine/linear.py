"""Matrix-vector products for the decode step, picked once per weight by device and dtype.

NOTE: on CPU, PyTorch's default float32 `F.linear` goes through MKL, whose small-batch sgemm reads weights at about a
third of this machine's memory bandwidth on AMD EPYC cores (measured: 12 GB/s vs 35 GB/s for a plain reduction). The
oneDNN kernel with a prepacked weight (what `torch.compile` itself uses on CPU) reaches about 20 GB/s, and the decode
step is nothing but weight reads, so float32 CPU weights are prepacked for it. Elsewhere plain `F.linear` is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

Linear = Callable[[torch.Tensor], torch.Tensor]  # x: [..., K] -> [..., N]


def onednn_available(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, prepack: bool = True) -> Linear:
    """weight: [N, K], bias: [N] -> a function computing x @ weight.T + bias."""
    if prepack and onednn_available(weight):
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)  # hint 8: fastest at batch 1 and 8 here
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return lambda x: F.linear(x, weight, bias)


# oneDNN's primitive cache and ideep's computation cache, each 1024 entries by default (entries per process).
ONEDNN_CACHE_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_onednn_caches(entries: int) -> None:
    """Hold the oneDNN caches to `entries` each, for a process that sees input shapes without bound (prefill).

    NOTE: each prepacked matmul keeps a primitive (JIT code plus buffers) per input shape in two caches, about
    0.3 MiB per entry for a [1536, 576] weight and more for larger ones; prefill batches have a new row count almost
    every time, so at the default 1024 entries a prefill replica of SmolLM2-135M grew by ~500 MiB over a 30-minute
    soak. With 64 entries it levels off within a few hundred requests at the same prefill speed (`overfill bench
    prefill-memory`: ratio 0.998). Both caches read their capacity from the environment at the process's first oneDNN
    op, so this must run before any model is loaded; a capacity already set in the environment wins.
    """
    if entries < 1:
        raise ValueError(f"oneDNN cache entries must be >= 1, got {entries}")
    for name in ONEDNN_CACHE_ENV:
        os.environ.setdefault(name, str(entries))

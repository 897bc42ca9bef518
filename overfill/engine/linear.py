"""Matrix-vector products for the decode step, picked once per weight by device and dtype.

NOTE: on CPU, PyTorch's default float32 `F.linear` goes through MKL, whose small-batch sgemm reads weights at about a
third of this machine's memory bandwidth on AMD EPYC cores (measured: 12 GB/s vs 35 GB/s for a plain reduction). The
oneDNN kernel with a prepacked weight (what `torch.compile` itself uses on CPU) reaches about 20 GB/s, and the decode
step is nothing but weight reads, so float32 CPU weights are prepacked for it. Elsewhere plain `F.linear` is used.
"""

from __future__ import annotations

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

"""`overfill bench transfer`: KV pull throughput and latency per transport vs a local copy of the same bytes.

For each size, a random KV of the given geometry is leased on a sender and pulled (and released) by a receiver in the
same process, over loopback for `grpc`. The reference is `torch.clone` of the same tensors: what moving the bytes
costs with no transport at all.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from overfill.transport.base import make_receiver, make_sender
from overfill.transport.wire import DEFAULT_CHUNK_BYTES, DTYPES, KVLayout


@dataclass
class TransferBenchSpec:
    transport: str = "grpc"
    sizes_mb: list[float] = field(default_factory=lambda: [1, 16, 64, 256])
    num_layers: int = 30       # SmolLM2-135M's geometry by default
    num_kv_heads: int = 3
    head_dim: int = 64
    dtype: str = "float32"
    repeats: int = 5
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


def run_transfer_bench(spec: TransferBenchSpec, progress: bool = True) -> dict:
    secret = uuid.uuid4().hex
    sender = make_sender(spec.transport, secret=secret, chunk_bytes=spec.chunk_bytes)
    receiver = make_receiver(spec.transport, secret=secret)
    rows = []
    try:
        for size_mb in tqdm(spec.sizes_mb, desc="bench transfer", disable=not progress):
            per_token = KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype, 1).total_bytes
            num_tokens = max(1, round(size_mb * 1e6 / per_token))
            shape = (spec.num_layers, spec.num_kv_heads, num_tokens, spec.head_dim)
            k, v = torch.randn(shape).to(DTYPES[spec.dtype]), torch.randn(shape).to(DTYPES[spec.dtype])
            layout = KVLayout.of(k)
            pulls, copies = [], []
            for repeat in range(spec.repeats + 1):
                ticket = sender.publish(f"bench-{size_mb}-{repeat}", k, v)
                start = time.perf_counter()
                k2, v2 = receiver.pull(ticket, layout)
                receiver.release(ticket)
                pulled = time.perf_counter() - start
                start = time.perf_counter()
                k.clone(), v.clone()
                copied = time.perf_counter() - start
                if repeat == 0:
                    assert torch.equal(k2, k) and torch.equal(v2, v), "transfer was not bit-exact"
                    continue  # warm-up: connection set-up
                pulls.append(pulled)
                copies.append(copied)
            pull_s, copy_s = statistics.median(pulls), statistics.median(copies)
            rows.append({"size_mb": layout.total_bytes / 1e6, "num_tokens": num_tokens, "pull_ms": 1e3 * pull_s,
                         "pull_gb_s": layout.total_bytes / pull_s / 1e9, "memcpy_ms": 1e3 * copy_s,
                         "memcpy_gb_s": layout.total_bytes / copy_s / 1e9})
    finally:
        receiver.close()
        sender.close()
    return {"spec": asdict(spec), "rows": rows}


def format_report(result: dict) -> str:
    spec = result["spec"]
    lines = [f"transport {spec['transport']}, geometry L={spec['num_layers']} H={spec['num_kv_heads']} "
             f"D={spec['head_dim']} {spec['dtype']}, chunk {spec['chunk_bytes'] >> 10} KiB"]
    header = f"{'KV MB':>8} {'tokens':>7} {'pull ms':>9} {'pull GB/s':>10} {'memcpy ms':>10} {'memcpy GB/s':>12}"
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        lines.append(f"{r['size_mb']:>8.1f} {r['num_tokens']:>7} {r['pull_ms']:>9.2f} {r['pull_gb_s']:>10.2f} "
                     f"{r['memcpy_ms']:>10.2f} {r['memcpy_gb_s']:>12.2f}")
    return "\n".join(lines)

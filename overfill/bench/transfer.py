"""`overfill bench transfer`: KV pull throughput and latency per transport vs the link's own copy bandwidth.

For each size, a random KV of the given geometry is leased by a sender in a separate process (as a prefill replica
would) and pulled and released by a receiver in this one (as a decode replica would): over loopback for `grpc` and
`gloo`, GPU to GPU for `nccl` (the sender on cuda:0, the receiver on cuda:1 of this node). The reference is what
moving the same bytes costs with no transport at all: `torch.clone` on the host for grpc and gloo, a cuda:0 -> cuda:1
copy for nccl. A pull's time includes its metadata RPC (the latency a request sees). The `inprocess` transport keeps
both roles in this process.
"""

from __future__ import annotations

import multiprocessing
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

    @property
    def sender_device(self) -> str:
        return "cuda:0" if self.transport == "nccl" else "cpu"

    @property
    def receiver_device(self) -> str:
        return "cuda:1" if self.transport == "nccl" else "cpu"

    @property
    def link(self) -> str:
        """What the reference copy measures."""
        return "cuda:0 -> cuda:1 copy" if self.transport == "nccl" else "torch.clone on the host (memcpy)"


def _num_tokens(spec: TransferBenchSpec, size_mb: float) -> int:
    per_token = KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype, 1).total_bytes
    return max(1, round(size_mb * 1e6 / per_token))


def _random_kv(spec: TransferBenchSpec, num_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (spec.num_layers, spec.num_kv_heads, num_tokens, spec.head_dim)
    return tuple(torch.randn(shape, generator=generator).to(DTYPES[spec.dtype]) for _ in range(2))


def _publish_all(sender, spec: TransferBenchSpec) -> dict:
    """Lease one KV per (size index, repeat); the tickets say where to pull each."""
    tickets = {}
    for index, size_mb in enumerate(spec.sizes_mb):
        k, v = (t.to(spec.sender_device) for t in _random_kv(spec, _num_tokens(spec, size_mb), seed=index))
        for repeat in range(spec.repeats + 1):
            tickets[(index, repeat)] = sender.publish(f"bench-{index}-{repeat}", k.clone(), v.clone())
    return tickets


def _sender_process(spec: TransferBenchSpec, secret: str, connection) -> None:
    """Child process: lease one KV per (size, repeat), send back the tickets, serve until told to stop."""
    sender = make_sender(spec.transport, secret=secret, chunk_bytes=spec.chunk_bytes, device=spec.sender_device)
    connection.send(_publish_all(sender, spec))
    connection.recv()  # stop
    sender.close()


def _check_devices(spec: TransferBenchSpec) -> None:
    if spec.transport == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < 2):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"--transport nccl needs two CUDA GPUs on this node (NCCL pairs two different GPUs); "
                         f"found {found}")


def _link_copy_s(spec: TransferBenchSpec, k: torch.Tensor, v: torch.Tensor) -> float:
    """Seconds to copy k and v over the reference link (tensors already where the sender keeps them)."""
    if spec.transport != "nccl":
        start = time.perf_counter()
        k.clone(), v.clone()
        return time.perf_counter() - start
    devices = (spec.sender_device, spec.receiver_device)
    for device in devices:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    k.to(spec.receiver_device), v.to(spec.receiver_device)
    for device in devices:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_transfer_bench(spec: TransferBenchSpec, progress: bool = True) -> dict:
    _check_devices(spec)
    secret = uuid.uuid4().hex
    receiver = make_receiver(spec.transport, secret=secret, device=spec.receiver_device)
    if spec.transport == "inprocess":
        process = None
        local_sender = make_sender(spec.transport, secret=secret, chunk_bytes=spec.chunk_bytes)
        tickets = _publish_all(local_sender, spec)
    else:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_sender_process, args=(spec, secret, child), daemon=True)
        process.start()
        tickets = parent.recv()
    rows = []
    try:
        for index, size_mb in enumerate(tqdm(spec.sizes_mb, desc="bench transfer", disable=not progress)):
            k, v = _random_kv(spec, _num_tokens(spec, size_mb), seed=index)
            layout = KVLayout.of(k)
            k_src, v_src = k.to(spec.sender_device), v.to(spec.sender_device)  # where the link copy starts
            pulls, copies = [], []
            for repeat in range(spec.repeats + 1):
                ticket = tickets[(index, repeat)]
                start = time.perf_counter()
                k2, v2 = receiver.pull(ticket, layout)
                receiver.release(ticket)
                pulled = time.perf_counter() - start
                copied = _link_copy_s(spec, k_src, v_src)
                if repeat == 0:
                    assert torch.equal(k2.cpu(), k) and torch.equal(v2.cpu(), v), "transfer was not bit-exact"
                    continue  # warm-up: connection (and process group) set-up
                pulls.append(pulled)
                copies.append(copied)
            pull_s, copy_s = statistics.median(pulls), statistics.median(copies)
            rows.append({"size_mb": layout.total_bytes / 1e6, "num_tokens": layout.num_tokens, "pull_ms": 1e3 * pull_s,
                         "pull_gb_s": layout.total_bytes / pull_s / 1e9, "memcpy_ms": 1e3 * copy_s,
                         "memcpy_gb_s": layout.total_bytes / copy_s / 1e9, "pull_over_link": copy_s / pull_s})
    finally:
        receiver.close()
        if process is not None:
            parent.send("stop")
            process.join(timeout=30)
        else:
            local_sender.close()
    return {"spec": {**asdict(spec), "link": spec.link}, "rows": rows}


def format_report(result: dict) -> str:
    spec = result["spec"]
    lines = [f"transport {spec['transport']}, geometry L={spec['num_layers']} H={spec['num_kv_heads']} "
             f"D={spec['head_dim']} {spec['dtype']}, chunk {spec['chunk_bytes'] >> 10} KiB; "
             f"link: {spec.get('link', 'torch.clone on the host (memcpy)')}"]
    header = (f"{'KV MB':>8} {'tokens':>7} {'pull ms':>9} {'pull GB/s':>10} {'link ms':>9} {'link GB/s':>10} "
              f"{'pull/link':>10}")
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        lines.append(f"{r['size_mb']:>8.1f} {r['num_tokens']:>7} {r['pull_ms']:>9.2f} {r['pull_gb_s']:>10.2f} "
                     f"{r['memcpy_ms']:>9.2f} {r['memcpy_gb_s']:>10.2f} {r['pull_gb_s'] / r['memcpy_gb_s']:>9.0%}")
    return "\n".join(lines)

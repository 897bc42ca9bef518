"""`overfill bench service`: the running service against the in-process engine, side by side in one run.

1) TTFT at several prompt lengths: service (client send -> first streamed message, max_tokens=1) vs in-process
   full-model prefill of the same token ids.
2) Decode throughput at 1/4/16 concurrent streams: the sum of 1/TPOT over the streams vs the in-process engine
   decoding the same batch size (streams / TPOT).
3) KV transfer: gRPC pull GB/s vs a local copy of the same bytes (`bench transfer`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from overfill.bench.transfer import TransferBenchSpec, run_transfer_bench
from overfill.client import AsyncOverFillClient, OverFillClient
from overfill.engine.generate import TwoStageEngine
from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams
from overfill.serving.config import load_config


@dataclass
class ServiceBenchSpec:
    config: str | None = "deploy/local.yaml"
    overrides: list[str] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=lambda: [128, 512, 2048])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    gen_len: int = 64
    repeats: int = 3
    transfer_sizes_mb: list[float] = field(default_factory=lambda: [1, 16, 64])


def _prompt_of_length(tokenizer, num_tokens: int) -> tuple[str, list[int]]:
    """Raw text that encodes to exactly `num_tokens` tokens (decoded from a slice of a long encoded text)."""
    words = " ".join(f"item{i % 97} of the list" for i in range(num_tokens))
    ids = tokenizer(words)["input_ids"][:num_tokens]
    text = tokenizer.decode(ids)
    return text, tokenizer(text)["input_ids"]


def run_service_bench(spec: ServiceBenchSpec, progress: bool = True) -> dict:
    from services.app import read_serve_file, start_service, stop_service

    overrides = [f"server.max_context_tokens={max(spec.prompt_lens) + spec.gen_len + 64}",
                 f"decode.num_slots={max(spec.concurrency)}", *spec.overrides]
    config = start_service(load_config(spec.config, overrides), serve_file=read_serve_file(spec.config))
    address = f"127.0.0.1:{config.server.grpc_port}"
    loaded = load_engine(config.models.full, config.models.decoder, ["overfill"], dtype=config.models.dtype)
    engine = TwoStageEngine(loaded.engine.full, loaded.engine.decoder, eos_token_ids=set())
    tokenizer = loaded.tokenizer
    try:
        ttft_rows = _bench_ttft(spec, address, engine, tokenizer, progress)
        decode_rows = _bench_decode(spec, address, engine, tokenizer, progress)
    finally:
        stop_service()
    transfer = run_transfer_bench(TransferBenchSpec(sizes_mb=spec.transfer_sizes_mb), progress=progress)
    return {"spec": asdict(spec), "ttft": ttft_rows, "decode": decode_rows, "transfer": transfer["rows"]}


def _bench_ttft(spec, address, engine, tokenizer, progress) -> list[dict]:
    rows = []
    with OverFillClient(address) as client:
        for length in tqdm(spec.prompt_lens, desc="TTFT", disable=not progress):
            text, ids = _prompt_of_length(tokenizer, length)
            service, local = [], []
            for repeat in range(spec.repeats + 1):
                start = time.perf_counter()
                next(iter(client.generate(text, max_tokens=1)))
                service_s = time.perf_counter() - start
                local_s = engine.generate([ids], SamplingParams(max_new_tokens=1), "overfill")[0].ttft_s
                if repeat:  # the first of each is a warm-up
                    service.append(service_s)
                    local.append(local_s)
            s, p = statistics.median(service), statistics.median(local)
            rows.append({"prompt_tokens": len(ids), "service_ttft_ms": 1e3 * s, "in_process_ttft_ms": 1e3 * p,
                         "overhead_pct": 100 * (s / p - 1)})
    return rows


def _bench_decode(spec, address, engine, tokenizer, progress) -> list[dict]:
    rows = []
    _, ids = _prompt_of_length(tokenizer, 128)
    text = tokenizer.decode(ids)
    for streams in tqdm(spec.concurrency, desc="decode", disable=not progress):
        service = asyncio.run(_service_decode_rate(address, text, streams, spec.gen_len))
        outputs = engine.generate([ids] * streams, SamplingParams(max_new_tokens=spec.gen_len), "overfill")
        local = streams / statistics.mean(o.tpot_s for o in outputs)
        rows.append({"streams": streams, "service_tokens_per_s": service, "in_process_tokens_per_s": local})
    for row in rows:
        row["service_speedup_vs_1_stream"] = row["service_tokens_per_s"] / rows[0]["service_tokens_per_s"]
    return rows


async def _service_decode_rate(address: str, text: str, streams: int, gen_len: int) -> float:
    """Steady-state decode tokens/s: the sum over concurrent streams of 1 / TPOT, TPOT being a stream's (last token
    time - first token time) / (tokens - 1). The same quantity as the in-process `streams / TPOT`."""
    async with AsyncOverFillClient(address) as client:
        async def tpot():
            first = last = None
            count = 0
            async for piece in client.generate(text, max_tokens=gen_len):
                now = time.perf_counter()
                first = first or now
                last = now
                count += len(piece.token_ids)
            return (last - first) / max(1, count - 1)

        tpots = await asyncio.gather(*(tpot() for _ in range(streams)))
    return sum(1 / t for t in tpots)


def format_report(result: dict) -> str:
    lines = ["TTFT: service vs in-process prefill (same token ids)",
             f"{'prompt tokens':>14} {'service ms':>11} {'in-process ms':>14} {'overhead':>9}"]
    for r in result["ttft"]:
        lines.append(f"{r['prompt_tokens']:>14} {r['service_ttft_ms']:>11.1f} {r['in_process_ttft_ms']:>14.1f} "
                     f"{r['overhead_pct']:>8.1f}%")
    lines += ["", "Decode throughput (sum of 1/TPOT): concurrent service streams vs in-process batch of the same size",
              f"{'streams':>8} {'service tok/s':>14} {'in-process tok/s':>17} {'vs 1 stream':>12}"]
    for r in result["decode"]:
        lines.append(f"{r['streams']:>8} {r['service_tokens_per_s']:>14.1f} {r['in_process_tokens_per_s']:>17.1f} "
                     f"{r['service_speedup_vs_1_stream']:>11.2f}x")
    lines += ["", "KV transfer (gRPC pull over loopback vs local copy)",
              f"{'KV MB':>8} {'pull GB/s':>10} {'memcpy GB/s':>12}"]
    for r in result["transfer"]:
        lines.append(f"{r['size_mb']:>8.1f} {r['pull_gb_s']:>10.2f} {r['memcpy_gb_s']:>12.2f}")
    return "\n".join(lines)

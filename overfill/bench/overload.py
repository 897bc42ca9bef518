"""`overfill bench overload`: the service under bursts of many times what it admits at once.

A burst sends `multiple` x capacity streams all at once (capacity: decode slots + decode waiting places + prefill batch
+ prefill queue, from the config). Each request is served or refused with RESOURCE_EXHAUSTED; the bench reports how
fast refusals come back (p50, p99, max, and by whom: the proxy, prefill or decode) next to the served requests, and
how much each replica's resident memory grows from the end of the first burst (which pays every first-time cost) to
the end of the last. Latency and memory depend on the machine and on whatever else runs on it, so their thresholds
live here and not in the tests (tests/test_service_overload.py checks the behaviour: statuses, bounds, tokens):

    refusal p50 of the last burst <= --max-refusal-p50-s (1.0 s; ~0.15-0.3 s on a quiet 2-core machine)
    RSS growth of every replica over the later bursts <= --max-rss-growth-mib (48 MiB)
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from dataclasses import asdict, dataclass, field

from overfill.client import AsyncOverFillClient, OverFillError

# The small queues the bench runs with (overridable): refusals come early, and a burst is cheap.
SMALL_LIMITS = ["decode.num_slots=2", "decode.max_waiting=2", "prefill.max_batch_size=2",
                "prefill.max_queued_requests=4", "server.max_ongoing_requests=16", "server.max_queued_requests=4"]


@dataclass
class Outcome:
    code: str                       # OK or the gRPC status name
    seconds: float                  # send to last message (or to the status)
    message: str = ""
    token_ids: list[int] = field(default_factory=list)


def burst_prompt(index: int) -> tuple[str, int]:
    """(prompt, max_tokens) of a burst's request `index`: every fourth prompt is long (about 120 tokens) so the
    prefill token budgets take part."""
    if index % 4 == 3:
        return " ".join(f"w{(index * 7 + j) % 50}" for j in range(60)), 8
    return f"request {index} says hello", 16


async def send_burst(address: str, num_requests: int, deadline_s: float = 60.0) -> list[Outcome]:
    """`num_requests` streams (burst_prompt(0..n-1)) sent at once; their outcomes in order."""
    async def one(client, index: int) -> Outcome:
        prompt, max_tokens = burst_prompt(index)
        start = time.perf_counter()
        try:
            tokens = [t async for piece in client.generate(prompt, max_tokens=max_tokens) for t in piece.token_ids]
            return Outcome("OK", time.perf_counter() - start, token_ids=tokens)
        except OverFillError as e:
            return Outcome(e.code, time.perf_counter() - start, e.message)

    async with AsyncOverFillClient(address, timeout_s=deadline_s) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(num_requests))))


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts and latencies of a burst: served (p50), refused (p50, p99, max) and refusals by reason."""
    served = sorted(o.seconds for o in outcomes if o.code == "OK")
    refused = sorted(o.seconds for o in outcomes if o.code == "RESOURCE_EXHAUSTED")
    reasons: dict[str, list[float]] = {}
    for o in outcomes:
        if o.code == "RESOURCE_EXHAUSTED":
            reasons.setdefault(re.sub(r"\d+", "N", o.message)[:40], []).append(o.seconds)
    return {
        "requests": len(outcomes), "served": len(served), "refused": len(refused),
        "other": sorted({o.code for o in outcomes} - {"OK", "RESOURCE_EXHAUSTED"}),
        "served_p50_s": statistics.median(served) if served else None,
        "refused_p50_s": statistics.median(refused) if refused else None,
        "refused_p99_s": refused[int(0.99 * (len(refused) - 1))] if refused else None,
        "refused_max_s": refused[-1] if refused else None,
        "refused_by": {reason: {"count": len(s), "p50_s": statistics.median(s)} for reason, s in reasons.items()},
    }


def replica_rss(app_name: str) -> dict[str, int]:
    """{deployment: resident bytes of its replica process} (Ray titles replica processes ServeReplica:app:name)."""
    import psutil

    rss = {}
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        for name in ("router", "prefill", "decode"):
            if f"ServeReplica:{app_name}:{name}" in title and process.info["memory_info"]:
                rss[name] = process.info["memory_info"].rss
    return rss


@dataclass
class OverloadBenchSpec:
    config: str | None = "deploy/local.yaml"
    overrides: list[str] = field(default_factory=list)  # after SMALL_LIMITS
    multiple: int = 10               # a burst is this many times the capacity
    bursts: int = 2                  # >= 2: memory growth is measured from the end of the first
    max_refusal_p50_s: float = 1.0
    max_rss_growth_mib: float = 48.0


def run_overload_bench(spec: OverloadBenchSpec) -> dict:
    if spec.bursts < 2:
        raise ValueError(f"bursts must be >= 2 (memory growth is measured from the first burst's end), got "
                         f"{spec.bursts}")
    from overfill.serving.config import load_config
    from services.app import read_serve_file, start_service, stop_service

    config = start_service(load_config(spec.config, SMALL_LIMITS + spec.overrides),
                           serve_file=read_serve_file(spec.config))
    capacity = (config.decode.num_slots + config.decode.max_waiting + config.prefill.max_batch_size
                + config.prefill.max_queued_requests)
    bursts, rss = [], []
    try:
        for _ in range(spec.bursts):
            bursts.append(summarize(asyncio.run(send_burst(f"127.0.0.1:{config.server.grpc_port}",
                                                           spec.multiple * capacity))))
            rss.append(replica_rss(config.server.app_name))
    finally:
        stop_service()
    growth = {name: (rss[-1][name] - rss[0][name]) / 2**20 for name in rss[0] if name in rss[-1]}
    last = bursts[-1]
    checks = {
        "refusal_p50": {"value_s": last["refused_p50_s"], "max_s": spec.max_refusal_p50_s,
                        "pass": last["refused_p50_s"] is not None and last["refused_p50_s"] <= spec.max_refusal_p50_s},
        "rss_growth": {"value_mib": growth, "max_mib": spec.max_rss_growth_mib,
                       "pass": bool(growth) and all(g <= spec.max_rss_growth_mib for g in growth.values())},
    }
    return {"spec": asdict(spec), "capacity": capacity, "bursts": bursts, "rss_mib": [
        {name: b / 2**20 for name, b in r.items()} for r in rss], "checks": checks}


def format_report(result: dict) -> str:
    lines = [f"bursts of {result['spec']['multiple']} x capacity ({result['capacity']}), sent at once",
             f"{'burst':>6} {'served':>7} {'p50 s':>7} {'refused':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7}"]
    for i, b in enumerate(result["bursts"]):
        lines.append(f"{i + 1:>6} {b['served']:>7} {b['served_p50_s'] or 0:>7.2f} {b['refused']:>8} "
                     f"{b['refused_p50_s'] or 0:>7.2f} {b['refused_p99_s'] or 0:>7.2f} {b['refused_max_s'] or 0:>7.2f}")
    for name, check in result["checks"].items():
        lines.append(f"{name}: {'PASS' if check['pass'] else 'FAIL'} "
                     f"{ {k: v for k, v in check.items() if k != 'pass'} }")
    return "\n".join(lines)

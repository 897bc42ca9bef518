"""Client capacity: is the load generator itself a bottleneck? Runs it against the stub server (a separate process,
fixed TTFT and ITL, no model) at rising Poisson rates and reports, per rate, the achieved send rate, how late
requests left against their schedule, the client's CPU use, and how far the measured TTFT/ITL sit above the stub's
set values (the client's own overhead). A rate counts as sustained when nothing failed, the achieved send rate is
within 5% of the requested one and 99% of requests left less than 50 ms late.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.arrivals import send_times
from loadtest.benchmark import Benchmark, BenchmarkConfig
from loadtest.client import Connection
from loadtest.datasets import RandomSpec
from loadtest.result import SCHEMA_VERSION

MAX_LATE_P99_S = 0.05
MIN_SEND_RATE_FRACTION = 0.95


@dataclass
class CapacitySpec:
    rates: list[float]
    seconds_per_rate: float = 10.0
    stub_ttft_ms: float = 50.0
    stub_itl_ms: float = 20.0
    input_len: int = 64
    output_len: int = 16
    max_concurrency: int | None = None
    seed: int = 0
    compare_rps: float | None = None      # the service's own max rate, to state the headroom
    show_progress: bool = True

    def __post_init__(self):
        if not self.seconds_per_rate > 0:
            raise ValueError(f"--seconds-per-rate must be > 0, got {self.seconds_per_rate}")
        if self.stub_ttft_ms < 0 or self.stub_itl_ms < 0:
            raise ValueError("--stub-ttft-ms and --stub-itl-ms must be >= 0")


class StubProcess:
    """`python -m loadtest.stub_server` in a child process (its CPU is not the client's)."""

    def __init__(self, ttft_ms: float, itl_ms: float, tokens: int):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loadtest.stub_server", "--port", "0", "--ttft-ms", str(ttft_ms),
             "--itl-ms", str(itl_ms), "--default-tokens", str(tokens)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the stub server did not start (said {line!r})")
        self.port = int(line.split()[-1])

    def cpu_s(self) -> float | None:
        """User + system CPU seconds so far (Linux /proc), else None."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure_capacity(spec: CapacitySpec) -> dict:
    stub = StubProcess(spec.stub_ttft_ms, spec.stub_itl_ms, spec.output_len)
    try:
        config = BenchmarkConfig(Connection(f"127.0.0.1:{stub.port}"), tokenizer="none",
                                 random=RandomSpec(spec.input_len, spec.output_len),
                                 max_concurrency=spec.max_concurrency,
                                 num_warmups=10, seed=spec.seed, percentiles=[50.0, 99.0],
                                 show_progress=spec.show_progress, request_timeout_s=60.0)
        bench = Benchmark(config)
        rows = []
        for i, rate in enumerate(sorted(spec.rates)):
            num = max(2, int(round(rate * spec.seconds_per_rate)))
            samples = bench.samples(num, spec.seed)
            stub_cpu0, cpu0, wall0 = stub.cpu_s(), time.process_time(), time.perf_counter()
            measured = bench.run(samples, send_times(num, rate, 1.0, None, spec.seed),
                                 {"request_rate": rate, "burstiness": 1.0}, id_prefix=f"c{i}-")
            wall, stub_cpu1 = time.perf_counter() - wall0, stub.cpu_s()
            rows.append(capacity_row(rate, measured, (time.process_time() - cpu0) / wall,
                                     None if stub_cpu0 is None else (stub_cpu1 - stub_cpu0) / wall, spec))
    finally:
        stub.stop()
    sustained = [row["request_rate"] for row in rows if row["sustained"]]
    best = max(sustained) if sustained else None
    return {"schema_version": SCHEMA_VERSION, "kind": "client-capacity", "stub_ttft_ms": spec.stub_ttft_ms,
            "stub_itl_ms": spec.stub_itl_ms, "input_len": spec.input_len, "output_len": spec.output_len,
            "seconds_per_rate": spec.seconds_per_rate, "cpu_count": os.cpu_count(), "rows": rows,
            "max_sustained_rps": best, "compare_rps": spec.compare_rps,
            "headroom_x": best / spec.compare_rps if best is not None and spec.compare_rps else None}


def capacity_row(rate: float, measured, client_cpu: float, stub_cpu: float | None, spec: CapacitySpec) -> dict:
    records = measured.run.records
    sends = np.array([r.send_s for r in records])
    late = np.array([r.send_s - r.scheduled_s for r in records])
    span = sends.max() - sends.min()
    achieved = (len(sends) - 1) / span if span > 0 else float("inf")
    lat = measured.metrics.latency
    late_p99 = float(np.percentile(late, 99))
    return {
        "request_rate": rate, "num_requests": len(records), "failed": measured.metrics.failed,
        "achieved_send_rps": achieved, "completed_rps": measured.metrics.request_throughput,
        "late_p50_ms": float(np.percentile(late, 50)) * 1000, "late_p99_ms": late_p99 * 1000,
        "client_cpu_pct": client_cpu * 100, "stub_cpu_pct": None if stub_cpu is None else stub_cpu * 100,
        "ttft_p50_ms": lat["ttft"].median_ms, "ttft_p99_ms": lat["ttft"].percentiles_ms[99.0],
        "itl_p50_ms": lat["itl"].median_ms, "itl_p99_ms": lat["itl"].percentiles_ms[99.0],
        "ttft_overhead_p50_ms": lat["ttft"].median_ms - spec.stub_ttft_ms,
        "max_concurrent_requests": measured.metrics.max_concurrent_requests,
        "sustained": bool(measured.metrics.failed == 0 and achieved >= MIN_SEND_RATE_FRACTION * rate
                          and late_p99 < MAX_LATE_P99_S),
    }


def format_capacity(outcome: dict) -> str:
    lines = [f"stub server: TTFT {outcome['stub_ttft_ms']:g} ms, ITL {outcome['stub_itl_ms']:g} ms, "
             f"{outcome['output_len']} tokens per request; {outcome['cpu_count']} CPUs on this machine",
             f"{'rate':>7} {'sent/s':>8} {'done/s':>8} {'late p99':>9} {'client CPU':>10} {'stub CPU':>9} "
             f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'fail':>5}  sustained"]
    for row in outcome["rows"]:
        stub = "-" if row["stub_cpu_pct"] is None else f"{row['stub_cpu_pct']:.0f}%"
        lines.append(f"{row['request_rate']:>7g} {row['achieved_send_rps']:>8.1f} {row['completed_rps']:>8.1f} "
                     f"{row['late_p99_ms']:>7.1f}ms {row['client_cpu_pct']:>9.0f}% {stub:>9} "
                     f"{row['ttft_p50_ms']:>9.1f} {row['ttft_p99_ms']:>9.1f} {row['itl_p50_ms']:>8.1f} "
                     f"{row['itl_p99_ms']:>8.1f} {row['failed']:>5}  {'yes' if row['sustained'] else 'NO'}")
    best = outcome["max_sustained_rps"]
    lines.append(f"highest sustained rate: {best:g} req/s" if best is not None else "no rate was sustained")
    if outcome["headroom_x"] is not None:
        lines.append(f"= {outcome['headroom_x']:.1f}x the service's {outcome['compare_rps']:g} req/s")
    return "\n".join(lines)


def save_capacity(outcome: dict, result_dir: str | Path | None) -> Path:
    directory = Path(result_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"client-capacity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=2) + "\n")
    return path

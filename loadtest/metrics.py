"""Benchmark metrics exactly as `vllm bench serve` defines them, from the client's request records.

Per successful request: TTFT = send -> first chunk; E2EL = send -> last chunk; TPOT = (E2EL - TTFT) / (output
tokens - 1), only for requests with more than one output token. ITL = every gap between consecutive chunks of every
request, pooled. Throughputs divide by the benchmark's duration (its start, before the first arrival gap, to the
end of its last request). Failed requests are
counted by gRPC status (`errors_by_code`) and left out of every latency and token count.

Goodput (DistServe, via vLLM's `--goodput ttft:MS tpot:MS e2el:MS`): a request is *good* when it succeeded and meets
every SLO given (value <= SLO; a request with one output token has TPOT 0 here, as in vLLM); request_goodput =
good / duration. `slo_attainment_pct` = good / all requests (failed ones miss every SLO) * 100.

Statistics follow vLLM: numpy mean, median, population std and linear-interpolated percentiles, in ms, and 0 for a
metric with no samples (e.g. every request failed; `completed` says so).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from loadtest.records import RequestRecord

SLO_METRICS = ("ttft", "tpot", "e2el")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


def parse_goodput(pairs: list[str] | None) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds); errors name --goodput."""
    slos: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition(":")
        if not sep:
            raise ValueError(f"--goodput takes NAME:MS pairs like ttft:500, got {pair!r}")
        if name not in SLO_METRICS:
            raise ValueError(f"--goodput: unknown metric {name!r} in {pair!r}; allowed: {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError as e:
            raise ValueError(f"--goodput {pair!r}: {value!r} is not a number of milliseconds") from e
        if not np.isfinite(slos[name]) or slos[name] < 0:
            raise ValueError(f"--goodput {pair!r}: the SLO must be a finite number of milliseconds >= 0")
    return slos


def parse_percentiles(text: str) -> list[float]:
    """"50,90,99" -> [50.0, 90.0, 99.0]; errors name --metric-percentiles."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise ValueError(f"--metric-percentiles takes numbers like 50,90,99, got {text!r}") from e
    if not values or any(not 0 <= p <= 100 for p in values):
        raise ValueError(f"--metric-percentiles: every percentile must be in [0, 100], got {text!r}")
    return values


def percentile_key(p: float) -> str:
    """99 -> "p99", 99.9 -> "p99.9" (vLLM's key spelling)."""
    return f"p{int(p)}" if int(p) == p else f"p{p}"


@dataclass
class LatencyStats:
    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: dict[float, float]

    @classmethod
    def of(cls, values_s: list[float], percentiles: list[float]) -> LatencyStats:
        values = np.asarray(values_s if values_s else [0.0]) * 1000.0
        return cls(float(np.mean(values)), float(np.median(values)), float(np.std(values)),
                   {p: float(np.percentile(values, p)) for p in percentiles})


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None          # None without --goodput
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float        # the busiest whole second of the run
    max_concurrent_requests: int          # the most requests active in any whole second
    latency: dict[str, LatencyStats]      # "ttft", "tpot", "itl", "e2el"
    errors_by_code: dict[str, int] = field(default_factory=dict)
    good: int = 0
    slo_attainment_pct: float | None = None


def is_good(record: RequestRecord, slos_ms: dict[str, float]) -> bool:
    """Succeeded and meets every SLO given."""
    if not record.success:
        return False
    values_s = {"ttft": record.ttft_s, "tpot": record.tpot_s or 0.0, "e2el": record.e2el_s}
    return all(values_s[name] <= slo / 1000.0 for name, slo in slos_ms.items())


def compute_metrics(records: list[RequestRecord], duration_s: float, percentiles: list[float],
                    slos_ms: dict[str, float] | None = None, input_lens: dict[int, int] | None = None
                    ) -> BenchmarkMetrics:
    """`input_lens` maps a record's index to the service's prompt token count, when known (else its estimate)."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    input_lens = input_lens or {}
    total_input = sum(input_lens.get(r.index, r.prompt_len) for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    latency = {
        "ttft": LatencyStats.of([r.ttft_s for r in ok], percentiles),
        "tpot": LatencyStats.of([r.tpot_s for r in ok if r.tpot_s is not None], percentiles),
        "itl": LatencyStats.of([gap for r in ok for gap in r.itls_s], percentiles),
        "e2el": LatencyStats.of([r.e2el_s for r in ok], percentiles),
    }
    good = sum(is_good(r, slos_ms) for r in records) if slos_ms else 0
    peak_tokens, peak_concurrency = peaks(ok)
    return BenchmarkMetrics(
        completed=len(ok), failed=len(failed), total_input=total_input, total_output=total_output,
        request_throughput=len(ok) / duration_s,
        request_goodput=good / duration_s if slos_ms else None,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        max_output_tokens_per_s=peak_tokens, max_concurrent_requests=peak_concurrency,
        latency=latency, errors_by_code=dict(sorted(Counter(r.status for r in failed).items())), good=good,
        slo_attainment_pct=100.0 * good / len(records) if slos_ms and records else None,
    )


def peaks(ok: list[RequestRecord]) -> tuple[float, int]:
    """vLLM's peak output tokens in one whole second, and the most requests active in any second (a request
    counts in every second from its send to its last chunk), over successful requests."""
    if not ok:
        return 0.0, 0
    start = min(r.send_s for r in ok)
    num_seconds = int(np.ceil(max(r.e2el_s + r.send_s for r in ok) - start)) + 1
    tokens = np.zeros(num_seconds)     # [second]
    active = np.zeros(num_seconds, dtype=int)
    for r in ok:
        for t, n in zip(r.chunk_times_s, r.chunk_tokens):
            tokens[int(t - start)] += n
        active[int(r.send_s - start): int(r.chunk_times_s[-1] - start) + 1] += 1
    return float(tokens.max()), int(active.max())

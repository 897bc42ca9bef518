"""Step load: a sequence of stages, each sending requests at its own rate (Poisson, or gamma with --burstiness) for
its duration, sampling replicas per pool once a second from Health throughout (rate 0 stages included, to watch a
pool scale back down). Reports per stage and per time window: latency, throughput and replicas per pool, as JSON
and one PNG.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.arrivals import Stage, stage_send_times
from loadtest.benchmark import Benchmark, Measured
from loadtest.metrics import compute_metrics
from loadtest.plots import plot_step
from loadtest.records import RequestRecord


@dataclass
class StepOutcome:
    stages: list[Stage]
    stage_ids: np.ndarray         # [num requests] the stage each request was sent in
    measured: Measured
    stage_reports: list[dict]
    windows: list[dict]

    @property
    def bounds(self) -> list[tuple[float, float, float]]:
        """(start_s, end_s, rate) per stage."""
        ends = np.cumsum([s.duration_s for s in self.stages])
        return [(float(end - s.duration_s), float(end), s.rate) for s, end in zip(self.stages, ends)]


def run_step(bench: Benchmark, stages: list[Stage], burstiness: float, seed: int, window_s: float = 5.0
             ) -> StepOutcome:
    times, stage_ids = stage_send_times(stages, burstiness, seed)
    total_s = sum(s.duration_s for s in stages)
    if len(times) == 0:
        raise ValueError("--stages: no request would be sent (every rate is 0 or every stage too short)")
    setup = {"request_rate": len(times) / total_s, "burstiness": burstiness,
             "stages": [{"rate": s.rate, "duration": s.duration_s} for s in stages]}
    measured = bench.run(bench.samples(len(times), seed), times, setup, min_duration_s=total_s)
    outcome = StepOutcome(stages, stage_ids, measured, [], [])
    series = measured.result["time_series"]
    outcome.stage_reports = [
        stage_report(stage, start, end, [r for r, s in zip(measured.run.records, stage_ids) if s == i], series,
                     bench.config.percentiles)
        for i, (stage, (start, end, _)) in enumerate(zip(stages, outcome.bounds))]
    outcome.windows = windows(measured.run.records, series, max(total_s, measured.run.duration_s), window_s)
    return outcome


def replicas_between(series: list[dict], start: float, end: float) -> dict[str, list[int]]:
    """{pool: [min, max]} running replicas among the samples taken in (start, end]."""
    seen: dict[str, list[int]] = {}
    for sample in series:
        if start < sample["time_s"] <= end and sample["replicas"]:
            for pool, n in sample["replicas"].items():
                low, high = seen.get(pool, [n, n])
                seen[pool] = [min(low, n), max(high, n)]
    return seen


def stage_report(stage: Stage, start: float, end: float, records: list[RequestRecord], series: list[dict],
                 percentiles: list[float]) -> dict:
    metrics = compute_metrics(records, stage.duration_s, sorted(set(percentiles) | {50.0, 99.0}))
    lat = metrics.latency
    return {"rate": stage.rate, "duration": stage.duration_s, "start_s": start, "end_s": end,
            "sent": len(records), "completed": metrics.completed, "failed": metrics.failed,
            "errors_by_code": metrics.errors_by_code,
            "p50_ttft_ms": lat["ttft"].percentiles_ms[50.0] if metrics.completed else None,
            "p99_ttft_ms": lat["ttft"].percentiles_ms[99.0] if metrics.completed else None,
            "p50_tpot_ms": lat["tpot"].percentiles_ms[50.0] if metrics.completed else None,
            "p99_tpot_ms": lat["tpot"].percentiles_ms[99.0] if metrics.completed else None,
            "p50_itl_ms": lat["itl"].percentiles_ms[50.0] if metrics.completed else None,
            "replicas_min_max": replicas_between(series, start, end)}


def _pct(values: list[float], p: float) -> float | None:
    return float(np.percentile(values, p)) if values else None


def windows(records: list[RequestRecord], series: list[dict], total_s: float, window_s: float) -> list[dict]:
    """Per window of `window_s`: requests sent, TTFT/E2EL percentiles of the successful requests sent in it, ITL
    percentiles of the gaps that ended in it, output tokens/s, and the replicas last sampled in it."""
    ok = [r for r in records if r.success]
    out = []
    for k in range(math.ceil(total_s / window_s)):
        start, end = k * window_s, (k + 1) * window_s
        sent = [r for r in ok if start <= r.send_s < end]
        ttfts, e2els = [r.ttft_s for r in sent], [r.e2el_s for r in sent]
        gaps = [g for r in ok for t, g in zip(r.chunk_times_s[1:], r.itls_s) if start <= t < end]
        tokens = sum(n for r in ok for t, n in zip(r.chunk_times_s, r.chunk_tokens) if start <= t < end)
        last = [s["replicas"] for s in series if start < s["time_s"] <= end and s["replicas"]]
        out.append({
            "start_s": start, "end_s": end,
            "sent": sum(1 for r in records if start <= r.send_s < end),
            "failed": sum(1 for r in records if not r.success and start <= r.send_s < end),
            "p50_ttft_ms": _ms(_pct(ttfts, 50)), "p90_ttft_ms": _ms(_pct(ttfts, 90)),
            "p50_e2el_ms": _ms(_pct(e2els, 50)), "p90_e2el_ms": _ms(_pct(e2els, 90)),
            "p50_itl_ms": _ms(_pct(gaps, 50)), "p90_itl_ms": _ms(_pct(gaps, 90)),
            "output_tokens_per_s": tokens / window_s,
            "replicas": last[-1] if last else None,
        })
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def step_json(outcome: StepOutcome) -> dict:
    return {**outcome.measured.result, "kind": "step", "stage_reports": outcome.stage_reports,
            "windows": outcome.windows}


def save_step(outcome: StepOutcome, result_dir: str | Path | None) -> list[Path]:
    """step-DATE.json and step-DATE.png (load, latency, throughput and replicas per pool over time)."""
    directory = Path(result_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"step-{outcome.measured.result['date']}"
    data = step_json(outcome)
    nan_windows = [{k: (np.nan if v is None else v) for k, v in w.items()} for w in outcome.windows]
    png = plot_step(data["time_series"], nan_windows, outcome.bounds, stem.with_suffix(".png"))
    data["plots"] = [png.name]
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return [stem.with_suffix(".json"), png]


def format_step(outcome: StepOutcome) -> str:
    lines = [f"{'stage':>5} {'rate':>6} {'secs':>6} {'sent':>5} {'ok':>5} {'fail':>5} {'p50 TTFT':>9} "
             f"{'p99 TTFT':>9} {'p50 TPOT':>9} {'p50 ITL':>8}  replicas (min-max)"]
    for i, s in enumerate(outcome.stage_reports):
        replicas = " ".join(f"{pool} {lo}-{hi}" for pool, (lo, hi) in s["replicas_min_max"].items()) or "not reported"
        lines.append(f"{i:>5} {s['rate']:>6g} {s['duration']:>6g} {s['sent']:>5} {s['completed']:>5} "
                     f"{s['failed']:>5} {_f(s['p50_ttft_ms']):>9} {_f(s['p99_ttft_ms']):>9} "
                     f"{_f(s['p50_tpot_ms']):>9} {_f(s['p50_itl_ms']):>8}  {replicas}")
    result = outcome.measured.result
    lines.append(f"overall: {result['completed']} completed, {result['failed']} failed in {result['duration']:.1f} s; "
                 f"{result['output_throughput']:.1f} output tokens/s")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

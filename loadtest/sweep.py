"""SLO sweep (DistServe's goodput): one benchmark per request rate, the same requests each time, and the highest
rate whose SLO attainment (requests meeting every --goodput SLO, failures counting as misses) reaches the target
(90% by default).

The highest rate is read conservatively: the highest tested rate such that it *and every lower tested rate* meet
the target. Attainment should fall as the rate rises; when a higher rate passes again after a miss, that is noise
(or a cold start at the lower rate) and capacity planning should not count on it. `first_rate_missing_slo` says
where attainment first fell short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loadtest.arrivals import send_times
from loadtest.benchmark import Benchmark, Measured
from loadtest.plots import plot_attainment, plot_latency_cdfs, plot_latency_over_time
from loadtest.result import SCHEMA_VERSION


def max_rate_meeting_slo(points: list[tuple[float, float]], target_pct: float) -> tuple[float | None, float | None]:
    """(highest rate r such that every tested rate <= r has attainment >= target, the first rate that misses).
    `points` are (rate, attainment %) in any order."""
    best, first_miss = None, None
    for rate, attainment in sorted(points):
        if attainment < target_pct:
            first_miss = rate
            break
        best = rate
    return best, first_miss


@dataclass
class SweepOutcome:
    rates: list[float]
    runs: list[Measured]
    target_pct: float
    max_rate: float | None
    first_miss: float | None

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(rate, m.metrics.slo_attainment_pct) for rate, m in zip(self.rates, self.runs)]


def run_sweep(bench: Benchmark, rates: list[float], num_prompts: int, burstiness: float, seed: int,
              target_pct: float = 90.0) -> SweepOutcome:
    if not bench.config.goodput_ms:
        raise ValueError("sweep needs --goodput NAME:MS ... (the SLOs whose attainment it measures)")
    samples = bench.samples(num_prompts, seed)
    runs = []
    for i, rate in enumerate(sorted(rates)):
        send = send_times(num_prompts, rate, burstiness, None, seed)
        runs.append(bench.run(samples, send, {"request_rate": rate, "burstiness": burstiness},
                              id_prefix=f"r{i}-"))
    outcome = SweepOutcome(sorted(rates), runs, target_pct, None, None)
    outcome.max_rate, outcome.first_miss = max_rate_meeting_slo(outcome.points, target_pct)
    return outcome


def sweep_json(outcome: SweepOutcome) -> dict:
    first = outcome.runs[0].result
    return {
        "schema_version": SCHEMA_VERSION, "kind": "sweep", "date": first["date"], "target": first["target"],
        "model_id": first["model_id"], "goodput_slos_ms": first["goodput_slos_ms"],
        "attainment_target_pct": outcome.target_pct, "max_rate_meeting_slo": outcome.max_rate,
        "first_rate_missing_slo": outcome.first_miss,
        "points": [{"request_rate": rate, "slo_attainment_pct": pct, "request_goodput": m.metrics.request_goodput,
                    "request_throughput": m.metrics.request_throughput, "failed": m.metrics.failed}
                   for (rate, pct), m in zip(outcome.points, outcome.runs)],
        "runs": [m.result for m in outcome.runs],
    }


def save_sweep(outcome: SweepOutcome, result_dir: str | Path | None) -> list[Path]:
    """sweep-DATE.json and three PNGs: attainment vs rate, latency CDFs, TTFT/ITL over time."""
    directory = Path(result_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"sweep-{outcome.runs[0].result['date']}"
    labelled = [(f"{rate:g} req/s", m.run.records) for rate, m in zip(outcome.rates, outcome.runs)]
    paths = [directory / f"{stem}.json",
             plot_attainment(outcome.points, outcome.target_pct, outcome.max_rate,
                             directory / f"{stem}-attainment.png"),
             plot_latency_cdfs(labelled, directory / f"{stem}-latency-cdf.png"),
             plot_latency_over_time(labelled, directory / f"{stem}-latency-over-time.png")]
    data = sweep_json(outcome)
    data["plots"] = [p.name for p in paths[1:]]
    paths[0].write_text(json.dumps(data, indent=2) + "\n")
    return paths


def format_sweep(outcome: SweepOutcome) -> str:
    header = (f"{'rate':>8} {'achieved':>9} {'goodput':>8} {'attain%':>8} {'failed':>6} {'p50 TTFT':>9} "
              f"{'p99 TTFT':>9} {'p50 TPOT':>9} {'p99 TPOT':>9}  (ms)")
    lines = [header]
    for (rate, pct), m in zip(outcome.points, outcome.runs):
        lat = m.metrics.latency
        lines.append(f"{rate:>8g} {m.metrics.request_throughput:>9.2f} {m.metrics.request_goodput:>8.2f} "
                     f"{pct:>8.1f} {m.metrics.failed:>6} {lat['ttft'].median_ms:>9.1f} "
                     f"{_p(lat['ttft'], 99):>9} {lat['tpot'].median_ms:>9.1f} {_p(lat['tpot'], 99):>9}")
    verdict = (f"highest rate meeting {outcome.target_pct:g}% SLO attainment: {outcome.max_rate:g} req/s"
               if outcome.max_rate is not None else
               f"no tested rate meets {outcome.target_pct:g}% SLO attainment")
    if outcome.first_miss is not None and outcome.max_rate is not None:
        verdict += f" (first miss at {outcome.first_miss:g} req/s)"
    return "\n".join(lines + [verdict])


def _p(stats, p: float) -> str:
    value = stats.percentiles_ms.get(p)
    return "-" if value is None else f"{value:.1f}"

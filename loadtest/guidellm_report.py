"""guidellm's JSON report set against `overfill loadtest` at the same load shapes (issue 14: the two tools' figures
agree within noise). `runs/guidellm.sh` runs both tools and then this module.

    python -m loadtest.guidellm_report shapes GUIDELLM.json
        one line per guidellm benchmark: its index, a tab, and the `overfill loadtest` flags of the same load shape
    python -m loadtest.guidellm_report compare GUIDELLM.json --loadtest-dir DIR [--out FILE.json]
        reads DIR/loadtest-INDEX-PASS.json (one or more passes of loadtest per benchmark), prints one table, writes
        both tools' figures, the ratios and the noise

guidellm's report (checked against 0.8.1) holds `benchmarks`, one per strategy of its sweep: synchronous (one request
at a time), throughput (as many at once as `max_concurrency` allows), then constant rates; each with `metrics`, one
distribution per metric (`mean`, `median`, `std_dev`, `count` over the successful requests).

The definitions match, which is what makes the comparison fair (guidellm/schemas/base/request_stats.py):
- TTFT: request start -> the first streamed event carrying text, in both tools. guidellm's median is the lower of
  the two middle values of an even count, loadtest's (numpy's) their mean: well under 1% apart here.
- guidellm's `inter_token_latency_ms` is (last token - first token) / (output tokens - 1) per request: vLLM's TPOT,
  `mean_tpot_ms` in loadtest's result, and not vLLM's ITL (the pooled gaps between events, which differ when an
  event carries several tokens). guidellm's own `time_per_output_token_ms` includes the TTFT: nothing to match.
- Throughput: successful requests (or their output tokens) / the time from the first request's start to the last
  one's end. That is guidellm's duration; loadtest's own `duration` starts with its run, and at a request rate its
  first request leaves one gap (1/rate) later (vLLM's schedule), which alone made a 24-request run at 0.85 req/s
  read 4% slower. So loadtest's window is taken from its per-request times (`--save-detailed`), and its reported
  figures are kept next to it.
- Token counts: the service's `usage` in both; guidellm prefers the server's figures to its tokenizer's.

Noise has two sources, and a gap is within noise when it is at most two standard errors of the larger:
- the per-request spread of each run (Welch's standard error of the difference of two means). It assumes requests
  independent, which they are not under a full concurrency limit: requests admitted together are prefilled in one
  batch and finish together, so a run of 24 holds a few waves, not 24 samples;
- so, with two or more loadtest passes, the spread between passes of the same tool at the same shape: a figure that
  moves that much between two runs of one tool cannot tell two tools apart.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# The median's standard error is about sqrt(pi/2) times the mean's for a roughly normal spread.
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
# A gap counts as noise when it is within two standard errors of the difference (about 95% for a normal spread).
NOISE_Z = 2.0


@dataclass(frozen=True)
class LoadShape:
    """How one guidellm benchmark sent its requests, in `overfill loadtest`'s terms."""

    label: str                   # guidellm's own name: synchronous, throughput@12, constant@0.64
    num_prompts: int             # the requests guidellm sent in that benchmark
    max_concurrency: int | None  # None: no limit
    request_rate: float | None   # None: the next request as soon as the concurrency limit allows
    burstiness: float | None     # gamma shape of the gaps for a rate: inf = fixed gaps, 1 = Poisson

    def loadtest_args(self) -> list[str]:
        args = ["--num-prompts", str(self.num_prompts),
                "--request-rate", "inf" if self.request_rate is None else f"{self.request_rate:.6g}"]
        if self.burstiness is not None:
            args += ["--burstiness", "inf" if math.isinf(self.burstiness) else f"{self.burstiness:g}"]
        if self.max_concurrency is not None:
            args += ["--max-concurrency", str(self.max_concurrency)]
        return args


@dataclass(frozen=True)
class Figures:
    """One benchmark's figures from either tool, over its successful requests."""

    completed: int
    failed: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens_per_request: float
    ttft_mean_ms: float
    ttft_median_ms: float
    ttft_std_ms: float
    tpot_mean_ms: float
    tpot_std_ms: float
    e2el_mean_ms: float
    e2el_std_ms: float


# (Figures field, title, how its noise is estimated): see `noise_se`.
COMPARED = (
    ("output_tokens_per_s", "output tok/s", "output_rate"),
    ("requests_per_s", "requests/s", "request_rate"),
    ("ttft_mean_ms", "TTFT mean ms", "ttft_mean"),
    ("ttft_median_ms", "TTFT p50 ms", "ttft_median"),
    ("tpot_mean_ms", "TPOT mean ms (guidellm ITL)", "tpot_mean"),
    ("output_tokens_per_request", "output tok/request", "same_work"),
)


# ---- guidellm's side ---------------------------------------------------------------------------------------------


def load_shape(benchmark: dict) -> LoadShape:
    """The load shape of one benchmark of guidellm's report, from its scheduling strategy."""
    strategy = benchmark["config"]["strategy"]
    kind = strategy["type_"]
    num_prompts = int(benchmark["metrics"]["request_totals"]["total"])
    max_concurrency = strategy.get("max_concurrency")
    if kind == "synchronous":
        return LoadShape(kind, num_prompts, 1, None, None)
    if kind == "concurrent":
        return LoadShape(f"concurrent@{strategy['streams']}", num_prompts, int(strategy["streams"]), None, None)
    if kind == "throughput":
        return LoadShape(f"throughput@{max_concurrency}" if max_concurrency else kind, num_prompts, max_concurrency,
                         None, None)
    if kind in ("constant", "poisson"):
        rate = float(strategy["rate"])
        return LoadShape(f"{kind}@{rate:.2f}", num_prompts, max_concurrency, rate,
                         math.inf if kind == "constant" else 1.0)
    raise ValueError(f"guidellm strategy {kind!r} has no `overfill loadtest` load shape (synchronous, concurrent, "
                     "throughput, constant and poisson have)")


def guidellm_figures(benchmark: dict) -> Figures:
    metrics = benchmark["metrics"]

    def ok(name: str) -> dict:
        return metrics[name]["successful"]

    completed = int(metrics["request_totals"]["successful"])
    return Figures(
        completed=completed,
        failed=int(metrics["request_totals"]["errored"]) + int(metrics["request_totals"]["incomplete"]),
        duration_s=float(benchmark["duration"]),
        # guidellm's mean of a per-second rate is its total over the benchmark's duration.
        requests_per_s=float(ok("requests_per_second")["mean"]),
        output_tokens_per_s=float(ok("output_tokens_per_second")["mean"]),
        output_tokens_per_request=float(ok("output_token_count")["mean"]),
        ttft_mean_ms=float(ok("time_to_first_token_ms")["mean"]),
        ttft_median_ms=float(ok("time_to_first_token_ms")["median"]),
        ttft_std_ms=float(ok("time_to_first_token_ms")["std_dev"]),
        # Weighted by each request's tokens after the first: with equal output lengths, the mean over requests.
        tpot_mean_ms=float(ok("inter_token_latency_ms")["mean"]),
        tpot_std_ms=float(ok("inter_token_latency_ms")["std_dev"]),
        e2el_mean_ms=1000.0 * float(ok("request_latency")["mean"]),
        e2el_std_ms=1000.0 * float(ok("request_latency")["std_dev"]),
    )


def guidellm_benchmarks(report: dict) -> list[tuple[LoadShape, Figures]]:
    benchmarks = report.get("benchmarks") or []
    if not benchmarks:
        raise ValueError("the guidellm report holds no benchmark")
    return [(load_shape(b), guidellm_figures(b)) for b in benchmarks]


# ---- overfill loadtest's side ------------------------------------------------------------------------------------


def measured_window_s(result: dict) -> float:
    """First request sent -> last token of the last successful request, from `--save-detailed`'s per-request lists
    (send time + TTFT + the gaps after it is a request's last token); `duration` when the lists are absent."""
    detail = ("send_times", "ttfts", "itls", "errors")
    if not all(key in result for key in detail):
        return float(result["duration"])
    done = [(send, send + ttft + sum(gaps)) for send, ttft, gaps, error
            in zip(*(result[key] for key in detail)) if not error]
    if not done:
        return float(result["duration"])
    return max(end for _, end in done) - min(send for send, _ in done)


def loadtest_figures(result: dict) -> Figures:
    """Figures from `overfill loadtest`'s flat result (vLLM's keys), throughputs over `measured_window_s`."""
    completed = int(result["completed"])
    window_s = measured_window_s(result)
    return Figures(
        completed=completed,
        failed=int(result["failed"]),
        duration_s=window_s,
        requests_per_s=completed / window_s if window_s > 0 else 0.0,
        output_tokens_per_s=result["total_output_tokens"] / window_s if window_s > 0 else 0.0,
        output_tokens_per_request=result["total_output_tokens"] / completed if completed else 0.0,
        ttft_mean_ms=float(result["mean_ttft_ms"]),
        ttft_median_ms=float(result["median_ttft_ms"]),
        ttft_std_ms=float(result["std_ttft_ms"]),
        tpot_mean_ms=float(result["mean_tpot_ms"]),
        tpot_std_ms=float(result["std_tpot_ms"]),
        e2el_mean_ms=float(result["mean_e2el_ms"]),
        e2el_std_ms=float(result["std_e2el_ms"]),
    )


LOADTEST_REPORTED_KEYS = ("duration", "request_throughput", "output_throughput")


# ---- the comparison ----------------------------------------------------------------------------------------------


def pooled(runs: list[Figures]) -> Figures:
    """Several loadtest passes at one shape as one run: counts summed; rates, means and medians averaged; each
    spread the root of the mean variance (so it stays one run's per-request spread)."""
    if not runs:
        raise ValueError("no loadtest run to pool")

    def mean(field: str) -> float:
        return sum(getattr(run, field) for run in runs) / len(runs)

    def spread(field: str) -> float:
        return math.sqrt(sum(getattr(run, field) ** 2 for run in runs) / len(runs))

    return Figures(
        completed=sum(run.completed for run in runs), failed=sum(run.failed for run in runs),
        duration_s=mean("duration_s"), requests_per_s=mean("requests_per_s"),
        output_tokens_per_s=mean("output_tokens_per_s"), output_tokens_per_request=mean("output_tokens_per_request"),
        ttft_mean_ms=mean("ttft_mean_ms"), ttft_median_ms=mean("ttft_median_ms"), ttft_std_ms=spread("ttft_std_ms"),
        tpot_mean_ms=mean("tpot_mean_ms"), tpot_std_ms=spread("tpot_std_ms"),
        e2el_mean_ms=mean("e2el_mean_ms"), e2el_std_ms=spread("e2el_std_ms"),
    )


def _se_of_difference(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """Standard error of the difference of two independent means (Welch)."""
    return math.sqrt(std_a ** 2 / max(n_a, 1) + std_b ** 2 / max(n_b, 1))


def per_request_se(kind: str, guidellm: Figures, loadtest: Figures) -> float | None:
    """The standard error of guidellm's figure minus loadtest's from each run's per-request spread; None where the
    figure should simply be equal (the work asked for).

    A throughput has no per-request samples. In a closed loop (a concurrency limit kept full) it is the concurrency
    over the mean end-to-end latency, so its relative error is that mean's; an open loop at a fixed rate varies
    less, so there this errs towards calling a gap noise."""
    g, lt = guidellm, loadtest
    if kind == "ttft_mean":
        return _se_of_difference(g.ttft_std_ms, g.completed, lt.ttft_std_ms, lt.completed)
    if kind == "ttft_median":
        return MEDIAN_SE_FACTOR * _se_of_difference(g.ttft_std_ms, g.completed, lt.ttft_std_ms, lt.completed)
    if kind == "tpot_mean":
        return _se_of_difference(g.tpot_std_ms, g.completed, lt.tpot_std_ms, lt.completed)
    if kind in ("output_rate", "request_rate"):
        if g.e2el_mean_ms <= 0 or lt.e2el_mean_ms <= 0:
            return 0.0
        relative = _se_of_difference(g.e2el_std_ms / g.e2el_mean_ms, g.completed,
                                     lt.e2el_std_ms / lt.e2el_mean_ms, lt.completed)
        rates = (g.output_tokens_per_s, lt.output_tokens_per_s) if kind == "output_rate" else \
            (g.requests_per_s, lt.requests_per_s)
        return relative * sum(rates) / 2
    if kind == "same_work":
        return None
    raise ValueError(f"unknown noise kind {kind!r}")


def run_to_run_se(values: list[float]) -> float | None:
    """The standard error of one guidellm run minus the mean of these loadtest passes, if a run of either tool
    varies as much as the passes vary between themselves: s * sqrt(1 + 1/k). None with fewer than two passes."""
    k = len(values)
    if k < 2:
        return None
    mean = sum(values) / k
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    return s * math.sqrt(1 + 1 / k)


def compare_figures(guidellm: Figures, loadtest_runs: list[Figures]) -> list[dict]:
    """One row per compared figure: guidellm's value, loadtest's (the mean of its passes, and each pass), the ratio
    guidellm / loadtest, both standard errors, the gap in units of the larger (z) and whether it is within noise
    (|z| <= 2; for the output tokens per request, equal within half a token)."""
    loadtest = pooled(loadtest_runs)
    rows = []
    for field, title, kind in COMPARED:
        g, lt = getattr(guidellm, field), getattr(loadtest, field)
        request_se = per_request_se(kind, guidellm, loadtest)
        passes = [getattr(run, field) for run in loadtest_runs]
        between_se = run_to_run_se(passes)
        if request_se is None:
            z, within = None, abs(g - lt) <= 0.5
        else:
            se = max(request_se, between_se or 0.0)
            z = (g - lt) / se if se > 0 else (0.0 if g == lt else math.copysign(math.inf, g - lt))
            within = abs(z) <= NOISE_Z
        rows.append({"metric": field, "title": title, "guidellm": g, "loadtest": lt, "loadtest_passes": passes,
                     "ratio": g / lt if lt else None, "per_request_se": request_se, "run_to_run_se": between_se,
                     "z": z, "within_noise": within})
    return rows


def guidellm_settings(report: dict) -> dict:
    """What guidellm was asked for (profile, constraints, data, without the fields left unset) and the body of one
    request it sent, the prompt replaced by its length: the record of what the figures measure."""
    spec = report.get("config", {}).get("spec", {})
    settings = {key: spec[key] for key in ("profile", "constraints") if key in spec}
    settings["data"] = [{k: v for k, v in source.items() if v not in (None, [], {})} for source in spec.get("data", [])]
    for benchmark in report.get("benchmarks") or []:
        for request in benchmark.get("requests", {}).get("successful") or []:
            if request.get("request_args"):
                body = json.loads(request["request_args"]).get("body") or {}
                if "prompt" in body:
                    body["prompt"] = f"<{len(body['prompt'])} characters>"
                settings["request_body"] = body
                return settings
    return settings


LOADTEST_SETTING_KEYS = ("backend", "dataset", "random_input_len", "random_output_len", "random_range_ratio",
                         "token_source", "tokenizer_id", "temperature", "num_warmups", "seed")


def comparison(report: dict, loadtest_results: dict[int, list[dict]]) -> dict:
    """Every guidellm benchmark that has loadtest results (by benchmark index, one per pass), compared."""
    points = []
    for index, (shape, g_figures) in enumerate(guidellm_benchmarks(report)):
        if not loadtest_results.get(index):
            continue
        runs = [loadtest_figures(result) for result in loadtest_results[index]]
        points.append({"index": index, "shape": asdict(shape), "loadtest_args": shape.loadtest_args(),
                       "guidellm": asdict(g_figures), "loadtest_passes": [asdict(run) for run in runs],
                       # loadtest's own figures, over the window that starts with its run
                       "loadtest_reported": [{key: result[key] for key in LOADTEST_REPORTED_KEYS}
                                             for result in loadtest_results[index]],
                       "rows": compare_figures(g_figures, runs)})
    if not points:
        raise ValueError("no guidellm benchmark has a loadtest result to compare with")
    first_loadtest = loadtest_results[points[0]["index"]][0]
    return {"guidellm_version": report.get("metadata", {}).get("guidellm_version"),
            "guidellm_settings": guidellm_settings(report),
            "loadtest_settings": {key: first_loadtest[key] for key in LOADTEST_SETTING_KEYS if key in first_loadtest},
            "noise_rule": f"|guidellm - loadtest| <= {NOISE_Z:g} standard errors, the larger of the per-request one "
                          "(throughputs: relative, from the end-to-end latency's) and the one from the spread "
                          "between loadtest passes",
            "points": points,
            "all_within_noise": all(row["within_noise"] for p in points for row in p["rows"])}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def format_table(result: dict) -> str:
    """The comparison as one Markdown table (it goes into docs/results.md as printed)."""
    lines = ["| load shape (requests: guidellm / loadtest passes) | figure | guidellm | overfill loadtest "
             "(mean of passes) | loadtest passes | ratio | z | within noise |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for point in result["points"]:
        counts = " + ".join(str(run["completed"]) for run in point["loadtest_passes"])
        label = f"{point['shape']['label']} ({point['guidellm']['completed']} / {counts})"
        for row in point["rows"]:
            passes = ", ".join(_number(value) for value in row["loadtest_passes"])
            lines.append(f"| {label} | {row['title']} | {_number(row['guidellm'])} | {_number(row['loadtest'])} | "
                         f"{passes} | {_number(row['ratio'])} | {_number(row['z'])} | "
                         f"{'yes' if row['within_noise'] else 'NO'} |")
            label = ""
    verdict = "every figure within noise" if result["all_within_noise"] else "some figures differ beyond noise"
    lines.append(f"\n{verdict} ({result['noise_rule']})")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.guidellm_report", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shapes = commands.add_parser("shapes", help="each benchmark's index and matching `overfill loadtest` flags")
    shapes.add_argument("report", type=Path)
    compare = commands.add_parser("compare", help="the table of both tools' figures")
    compare.add_argument("report", type=Path)
    compare.add_argument("--loadtest-dir", type=Path, required=True,
                         help="holds loadtest-INDEX-PASS.json: benchmark INDEX's loadtest result in pass PASS")
    compare.add_argument("--out", type=Path, help="write the comparison JSON here")
    args = parser.parse_args(argv)

    report = json.loads(args.report.read_text())
    if args.command == "shapes":
        for index, (shape, _) in enumerate(guidellm_benchmarks(report)):
            print(f"{index}\t{' '.join(shape.loadtest_args())}")
        return 0
    results = {}
    for index in range(len(report.get("benchmarks") or [])):
        passes = {int(path.stem.rsplit("-", 1)[1]): path for path in args.loadtest_dir.glob(f"loadtest-{index}-*.json")
                  if path.stem.rsplit("-", 1)[1].isdigit()}
        paths = [passes[number] for number in sorted(passes)]
        results[index] = [json.loads(path.read_text()) for path in paths]
    result = comparison(report, results)
    print(format_table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The result of one benchmark: a flat JSON object with `vllm bench serve`'s key names (so dashboards and scripts
written for vLLM read it), our own additions, and the end-of-run table printed like vLLM's.

vLLM's keys: date, backend, label, model_id, tokenizer_id, num_prompts, request_rate ("inf" or a number),
burstiness, max_concurrency, [ramp_up_strategy, ramp_up_start_rps, ramp_up_end_rps], duration, completed, failed,
total_input_tokens, total_output_tokens, request_throughput, request_goodput (null without --goodput),
output_throughput, total_token_throughput, max_output_tokens_per_s, max_concurrent_requests, and for each of ttft,
tpot, itl, e2el: mean_X_ms, median_X_ms, std_X_ms, pN_X_ms per --metric-percentiles. With --save-detailed also
input_lens, output_lens, ttfts, itls (per request, seconds) and errors ("" for a success), as vLLM (failed requests
have ttft 0 and no itls there, as in vLLM; vLLM's generated_texts are not kept).

Ours: schema_version, target, errors_by_code, goodput_slos_ms, slo_attainment_pct, dataset (name, lengths,
token_source), seed, num_warmups, metric_percentiles, and time_series (one sample a second: concurrency, output
tokens/s, sent/completed/failed per second, replicas per pool or null).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from loadtest.metrics import LATENCY_METRICS, BenchmarkMetrics, percentile_key
from loadtest.runner import RunOutput

SCHEMA_VERSION = 1
BACKEND = "overfill-grpc"
METRIC_TITLES = {"ttft": ("TTFT", "Time to First Token"), "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
                 "itl": ("ITL", "Inter-token Latency"), "e2el": ("E2EL", "End-to-end Latency")}


def build_result(setup: dict, metrics: BenchmarkMetrics, run: RunOutput, save_detailed: bool = False) -> dict:
    """`setup` holds the run's configuration keys (model_id, num_prompts, request_rate, ...; see cli)."""
    rate = setup.get("request_rate", math.inf)
    result = {
        "schema_version": SCHEMA_VERSION,
        "date": run.started_at.strftime("%Y%m%d-%H%M%S"),
        "backend": BACKEND,
        **setup,
        "request_rate": "inf" if rate == math.inf else rate,
        "duration": run.duration_s,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "total_output_tokens": metrics.total_output,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
        "max_output_tokens_per_s": metrics.max_output_tokens_per_s,
        "max_concurrent_requests": metrics.max_concurrent_requests,
    }
    for name in LATENCY_METRICS:
        stats = metrics.latency[name]
        result[f"mean_{name}_ms"] = stats.mean_ms
        result[f"median_{name}_ms"] = stats.median_ms
        result[f"std_{name}_ms"] = stats.std_ms
        for p, value in stats.percentiles_ms.items():
            result[f"{percentile_key(p)}_{name}_ms"] = value
    result["errors_by_code"] = metrics.errors_by_code
    result["slo_attainment_pct"] = metrics.slo_attainment_pct
    result["warmup_failures"] = run.warmup_failures
    result["time_series"] = [sample.as_json() for sample in run.time_series]
    if save_detailed:
        records = run.records
        result["input_lens"] = [run.prompt_tokens.get(r.index, r.prompt_len) for r in records]
        result["output_lens"] = [r.output_tokens if r.success else 0 for r in records]
        result["ttfts"] = [r.ttft_s if r.success else 0.0 for r in records]
        result["itls"] = [r.itls_s if r.success else [] for r in records]
        result["errors"] = ["" if r.success else f"{r.status}: {r.error}" for r in records]
        result["send_times"] = [r.send_s for r in records]
    return result


def result_filename(result: dict) -> str:
    """vLLM's pattern: {label or backend}-{rate}qps[-concurrencyN]-{model}-{date}.json."""
    label = result.get("label") or result["backend"]
    concurrency = f"-concurrency{result['max_concurrency']}" if result.get("max_concurrency") else ""
    model = Path(str(result.get("model_id") or "unknown")).name
    if result.get("ramp_up_strategy"):
        rate = f"ramp-up-{result['ramp_up_strategy']}-{result['ramp_up_start_rps']}qps-{result['ramp_up_end_rps']}qps"
    else:
        rate = f"{result['request_rate']}qps"
    return f"{label}-{rate}{concurrency}-{model}-{result['date']}.json"


def save_result(result: dict, result_dir: str | Path | None, filename: str | None = None) -> Path:
    directory = Path(result_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or result_filename(result))
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def format_table(result: dict) -> str:
    """The end-of-run summary, laid out as vLLM prints it, plus failures by status and SLO attainment."""
    lines = ["{:=^50}".format(" Serving Benchmark Result ")]

    def row(label: str, value, fmt: str = "") -> None:
        lines.append(f"{label:<40} {value:{fmt}}")

    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    for code, count in result["errors_by_code"].items():
        row(f"  {code}:", count)
    if result.get("max_concurrency"):
        row("Maximum request concurrency:", result["max_concurrency"])
    if result["request_rate"] != "inf":
        row("Request rate configured (RPS):", result["request_rate"], ".2f")
    row("Benchmark duration (s):", result["duration"], ".2f")
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"], ".2f")
    if result["request_goodput"] is not None:
        row("Request goodput (req/s):", result["request_goodput"], ".2f")
        row("SLO attainment (%):", result["slo_attainment_pct"], ".2f")
    row("Output token throughput (tok/s):", result["output_throughput"], ".2f")
    row("Peak output token throughput (tok/s):", result["max_output_tokens_per_s"], ".2f")
    row("Peak concurrent requests:", result["max_concurrent_requests"])
    row("Total Token throughput (tok/s):", result["total_token_throughput"], ".2f")
    percentiles = result.get("metric_percentiles", [])
    for name in LATENCY_METRICS:
        short, title = METRIC_TITLES[name]
        lines.append(f"{title:-^50}")
        row(f"Mean {short} (ms):", result[f"mean_{name}_ms"], ".2f")
        row(f"Median {short} (ms):", result[f"median_{name}_ms"], ".2f")
        for p in percentiles:
            key = percentile_key(p)
            row(f"{key.upper()} {short} (ms):", result[f"{key}_{name}_ms"], ".2f")
    lines.append("=" * 50)
    return "\n".join(lines)

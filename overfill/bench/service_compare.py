"""`overfill bench service --compare-decoder PATH|full`: does OverFill's gain survive the service?

The service is started twice with one config, once with the decoder under test and once with the comparison decoder
(`full`: the full-width identity decoder, which decodes as the full model does), and each is driven by the same
closed-loop load (`overfill loadtest`'s benchmark: random prompts, fixed concurrency). Per run: output tokens/s, TPOT,
TTFT, goodput at a TPOT SLO, and the CPU seconds each Serve process spent per streamed token (decode, prefill, router,
proxy; from the processes' own CPU times, warm-up excluded). Next to it, the in-process ratio of the two decoders
(`bench decode`'s engine, overfill mode, at the load's concurrency as the batch), so the table says how much of the
model-step gain the service keeps. Runs alternate A B B A ... (`rounds` of each), so a machine that drifts during
the bench favours neither; the ratio compares the two decoders' mean output tokens/s.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from overfill.serving.config import load_config

ROLES = ("decode", "prefill", "router", "proxy")  # the processes on a request's path (find_service_processes' roles)
FULL = "full"


@dataclass
class CompareSpec:
    compare_decoder: str                    # a decoder directory, or "full" (the identity decoder)
    decoder: str | None = None              # the decoder under test (default: the config's models.decoder)
    config: str | None = "deploy/local.yaml"
    overrides: list[str] = field(default_factory=list)
    concurrency: int = 12
    num_prompts: int = 48
    input_len: int = 128
    output_len: int = 96
    warmup_prompts: int = 4
    tpot_slo_ms: float = 100.0              # goodput: requests whose mean TPOT is within this
    in_process_repeats: int = 2
    rounds: int = 2                         # service runs per decoder, alternating A B B A ...
    seed: int = 0


def identity_decoder(model: str) -> Path:
    """The full model's width as a decoder (nothing cut: the same function as the full model), built once in
    $OVERFILL_HOME/decoders. It decodes at the full model's cost: the baseline OverFill's decoder is measured by."""
    from transformers import AutoConfig

    from overfill.build_decoder import PruneSpec, build_decoder
    from overfill.decoder_checkpoint import MANIFEST_NAME
    from overfill.model_loading import resolve_model
    from overfill.paths import decoders_dir

    model_dir = resolve_model(model)
    full = AutoConfig.from_pretrained(model_dir)
    output = decoders_dir() / f"{Path(str(model)).name}-identity"
    if not (output / MANIFEST_NAME).is_file():
        build_decoder(PruneSpec(model, full.hidden_size, full.intermediate_size, output=output, reconstruct="none"),
                      progress=False)
    return output


def fixed_size_serve_file(serve_file: dict | None) -> dict | None:
    """The deploy file without autoscaling: both runs must decode on the same number of replicas."""
    if serve_file is None:
        return None
    fixed = copy.deepcopy(serve_file)
    for app in fixed["applications"]:
        for deployment in app.get("deployments", []):
            deployment.pop("autoscaling_config", None)
    return fixed


def _measure_service(spec: CompareSpec, decoder: Path, progress: bool) -> dict:
    """One run: start the service on `decoder`, warm it up, measure the load and the processes' CPU, stop it."""
    from loadtest.arrivals import send_times
    from loadtest.benchmark import Benchmark, BenchmarkConfig
    from loadtest.client import Connection
    from loadtest.datasets import RandomSpec
    from loadtest.service_watch import cpu_seconds_by_role, find_service_processes
    from services.app import read_serve_file, start_service, stop_service

    config = load_config(spec.config, [*spec.overrides, f"models.decoder={decoder}"])
    config = start_service(config, serve_file=fixed_size_serve_file(read_serve_file(spec.config)))
    try:
        bench = Benchmark(BenchmarkConfig(
            Connection(f"127.0.0.1:{config.server.grpc_port}"), random=RandomSpec(spec.input_len, spec.output_len),
            max_concurrency=spec.concurrency, seed=spec.seed, goodput_ms={"tpot": spec.tpot_slo_ms},
            percentiles=[50.0, 99.0], show_progress=progress, label=decoder.name))
        warmup = bench.samples(spec.warmup_prompts, spec.seed + 1)
        bench.run(warmup, send_times(len(warmup), seed=spec.seed), {})
        pids = find_service_processes()
        before = cpu_seconds_by_role(pids)
        measured = bench.run(bench.samples(spec.num_prompts, spec.seed), send_times(spec.num_prompts, seed=spec.seed),
                             {})
        after = cpu_seconds_by_role(pids)
    finally:
        stop_service()
    result = measured.result
    tokens = max(1, result["total_output_tokens"])
    cpu_ms_per_token = {role: 1e3 * (after.get(role, 0.0) - before.get(role, 0.0)) / tokens for role in ROLES}
    return {
        "decoder": str(decoder), "completed": result["completed"], "failed": result["failed"],
        "output_tokens": result["total_output_tokens"], "duration_s": result["duration"],
        "output_tokens_per_s": result["output_throughput"], "mean_tpot_ms": result["mean_tpot_ms"],
        "p99_tpot_ms": result["p99_tpot_ms"], "mean_ttft_ms": result["mean_ttft_ms"],
        "p99_ttft_ms": result["p99_ttft_ms"], "mean_itl_ms": result["mean_itl_ms"],
        "goodput_req_s": result["request_goodput"], "cpu_ms_per_token": cpu_ms_per_token,
        "router_plus_proxy_cpu_ms_per_token": cpu_ms_per_token["router"] + cpu_ms_per_token["proxy"],
        "num_processes": {role: len(pids.get(role, [])) for role in ROLES},
    }


def _in_process_tokens_per_s(spec: CompareSpec, model: str, decoder: Path, progress: bool) -> float:
    from overfill.bench.decode import DecodeBenchSpec, run_decode_bench

    result = run_decode_bench(DecodeBenchSpec(model=model, decoder=str(decoder), batch_sizes=[spec.concurrency],
                                              prompt_len=spec.input_len, gen_len=spec.output_len,
                                              modes=["overfill"], repeats=spec.in_process_repeats),
                              progress=progress)
    (row,) = result["rows"]
    return row["tokens_per_s"]


def run_compare(spec: CompareSpec, progress: bool = True) -> dict:
    from overfill.serving.config import decoder_dir

    base = load_config(spec.config, spec.overrides)
    model = base.models.full
    under_test = Path(spec.decoder).expanduser() if spec.decoder else decoder_dir(base.models)
    baseline = identity_decoder(model) if spec.compare_decoder == FULL else Path(spec.compare_decoder).expanduser()
    decoders = {"decoder": under_test, "baseline": baseline}
    order = [name for r in range(spec.rounds) for name in (("decoder", "baseline") if r % 2 == 0
                                                           else ("baseline", "decoder"))]
    runs = [{"name": name, **_measure_service(spec, decoders[name], progress)} for name in order]
    in_process = {name: _in_process_tokens_per_s(spec, model, path, progress) for name, path in decoders.items()}
    mean = {name: summarize([run for run in runs if run["name"] == name]) for name in decoders}
    return {
        "spec": asdict(spec), "model": model, "runs": runs, "mean": mean, "in_process_tokens_per_s": in_process,
        "service_ratio": mean["decoder"]["output_tokens_per_s"] / mean["baseline"]["output_tokens_per_s"],
        "in_process_ratio": in_process["decoder"] / in_process["baseline"],
    }


def summarize(runs: list[dict]) -> dict:
    """The mean of one decoder's runs: throughput, latencies and CPU per token per role."""
    keys = ("output_tokens_per_s", "mean_tpot_ms", "p99_tpot_ms", "mean_ttft_ms", "router_plus_proxy_cpu_ms_per_token")
    out = {key: float(np.mean([run[key] for run in runs])) for key in keys}
    goodputs = [run["goodput_req_s"] for run in runs if run["goodput_req_s"] is not None]
    out["goodput_req_s"] = float(np.mean(goodputs)) if goodputs else None
    out["cpu_ms_per_token"] = {role: float(np.mean([run["cpu_ms_per_token"][role] for run in runs])) for role in ROLES}
    out["decoder"], out["failed"] = runs[0]["decoder"], sum(run["failed"] for run in runs)
    return out


def format_report(result: dict) -> str:
    spec = result["spec"]
    lines = [f"bench service --compare-decoder {spec['compare_decoder']}: {result['model']}, concurrency "
             f"{spec['concurrency']}, {spec['num_prompts']} requests of random {spec['input_len']} -> "
             f"{spec['output_len']} tokens (same config; {spec['rounds']} runs each, alternating)", ""]
    header = ("| run | decoder | out tok/s | mean TPOT ms | p99 TPOT ms | mean TTFT ms | goodput req/s (TPOT<="
              f"{spec['tpot_slo_ms']:g} ms) | CPU ms/token decode | prefill | router | proxy | router+proxy |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    rows = [(f"{run['name']} #{i + 1}", run) for i, run in enumerate(result["runs"])]
    rows += [(f"**{name} mean**", run) for name, run in result["mean"].items()]
    for name, run in rows:
        cpu = run["cpu_ms_per_token"]
        goodput = "-" if run["goodput_req_s"] is None else f"{run['goodput_req_s']:.2f}"
        lines.append(f"| {name} | {Path(run['decoder']).name} | {run['output_tokens_per_s']:.1f} | "
                     f"{run['mean_tpot_ms']:.1f} | {run['p99_tpot_ms']:.1f} | {run['mean_ttft_ms']:.0f} | {goodput} | "
                     f"{cpu['decode']:.2f} | {cpu['prefill']:.2f} | {cpu['router']:.2f} | {cpu['proxy']:.2f} | "
                     f"{run['router_plus_proxy_cpu_ms_per_token']:.2f} |")
    lines += ["", f"decoder/baseline output tokens/s: service {result['service_ratio']:.3f}x, in process (batch "
                  f"{spec['concurrency']}, overfill mode) {result['in_process_ratio']:.3f}x "
                  f"({result['in_process_tokens_per_s']['decoder']:.1f} vs "
                  f"{result['in_process_tokens_per_s']['baseline']:.1f} tokens/s)"]
    failed = {name: run["failed"] for name, run in result["mean"].items() if run["failed"]}
    if failed:
        lines.append(f"FAILED requests: {failed}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["mean"]
    names = list(runs)
    fig, (throughput, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    service = [runs[n]["output_tokens_per_s"] for n in names]
    in_process = [result["in_process_tokens_per_s"][n] for n in names]
    x = np.arange(len(names))
    throughput.bar(x - 0.2, service, 0.4, label="service")
    throughput.bar(x + 0.2, in_process, 0.4, label="in process")
    throughput.set_xticks(x, [f"{n}\n{Path(runs[n]['decoder']).name}" for n in names])
    throughput.set_ylabel("output tokens/s")
    throughput.set_title(f"service {result['service_ratio']:.2f}x, in process {result['in_process_ratio']:.2f}x")
    throughput.legend()
    bottom = np.zeros(len(names))
    for role in ROLES:
        values = np.array([runs[n]["cpu_ms_per_token"][role] for n in names])
        cpu.bar(x, values, 0.5, bottom=bottom, label=role)
        bottom += values
    cpu.set_xticks(x, names)
    cpu.set_ylabel("CPU ms per streamed token")
    cpu.set_title("where the CPU goes")
    cpu.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""`overfill loadtest`: load-test the gRPC API (or, with --backend openai, the OpenAI-compatible HTTP API) with
`vllm bench serve`'s flags, metrics and result keys.

    overfill loadtest --target HOST:PORT [--num-prompts N --request-rate R ...]      one benchmark
    overfill loadtest sweep --target HOST:PORT --rates 1,2,4 --goodput ttft:MS ...  highest rate at >= 90% SLOs
    overfill loadtest step --target HOST:PORT --stages '[{"rate":R,"duration":S}]'  step load, replicas per pool
    overfill loadtest soak --target HOST:PORT --request-rate R --duration-min M      steady load, memory and leases
    overfill loadtest client-capacity [--rates 20,50,100]                          the client against a stub server

The first positional word picks the mode (default: one benchmark); every flag belongs to one parser, and a flag
that only one mode reads is refused in the others. The code lives in the top-level `loadtest` package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

MODES = ("run", "sweep", "step", "soak", "client-capacity")
# Flags that only one mode reads (dest -> mode); the rest are shared.
MODE_ONLY = {"backend": ("run", "sweep", "step", "soak"), "num_prompts": ("run", "sweep"),
             "request_rate": ("run", "soak"), "ramp_up_strategy": ("run",),
             "ramp_up_start_rps": ("run",), "ramp_up_end_rps": ("run",), "result_filename": ("run",),
             "burstiness": ("run", "sweep", "step", "soak"), "goodput": ("run", "sweep", "step", "soak"),
             "rates": ("sweep", "client-capacity"), "attainment_target": ("sweep",), "stages": ("step",),
             "window_s": ("step",), "seconds_per_rate": ("client-capacity",), "stub_ttft_ms": ("client-capacity",),
             "stub_itl_ms": ("client-capacity",), "compare_rps": ("client-capacity",),
             "duration_min": ("soak",), "sample_every_s": ("soak",), "metrics_url": ("soak",), "drain_s": ("soak",),
             "max_rss_growth_mib_per_min": ("soak",), "max_lease_growth_per_min": ("soak",)}


def _rate(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("loadtest", help="load-test the gRPC or HTTP API (vllm bench serve metrics and keys)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=MODES, default="run",
                   help="run (default): one benchmark; sweep; step; soak; client-capacity")
    target = p.add_argument_group("target")
    target.add_argument("--target", help="HOST:PORT of the gRPC API, or of the HTTP API with --backend openai "
                                         "(every mode but client-capacity)")
    target.add_argument("--backend", choices=["grpc", "openai"],
                        help="grpc (default): overfill.v1.Generation; openai: streamed chat and text completions "
                             "from the OpenAI-compatible HTTP API at http://TARGET/v1 (https with --tls-ca)")
    target.add_argument("--api-key", default=None,
                        help="sent as `authorization: Bearer KEY` (gRPC metadata or HTTP header; default: "
                             "$OVERFILL_API_KEY)")
    target.add_argument("--tls-ca", type=Path, help="PEM root certificate: connect with TLS")
    target.add_argument("--tls-server-name", help="name to check the server certificate against")
    target.add_argument("--ready-check-timeout-sec", type=float, default=60.0,
                        help="wait this long for Health (or GET /health) to say SERVING (default 60)")

    traffic = p.add_argument_group("traffic (vllm bench serve)")
    traffic.add_argument("--num-prompts", type=int, help="requests per benchmark (default 100)")
    traffic.add_argument("--request-rate", type=_rate, help="requests/s; inf (default) sends all at once")
    traffic.add_argument("--burstiness", type=_rate,
                         help="gamma shape of the gaps: 1 = Poisson (default), <1 burstier, >1 more regular")
    traffic.add_argument("--max-concurrency", type=int, help="most requests in flight (default: no limit)")
    traffic.add_argument("--ramp-up-strategy", choices=["linear", "exponential"],
                         help="raise the rate from --ramp-up-start-rps to --ramp-up-end-rps over the run")
    traffic.add_argument("--ramp-up-start-rps", type=_rate)
    traffic.add_argument("--ramp-up-end-rps", type=_rate)
    traffic.add_argument("--num-warmups", type=int, default=0, help="requests sent first and not measured")
    traffic.add_argument("--seed", type=int, default=0, help="arrivals and dataset (default 0)")
    traffic.add_argument("--request-timeout", type=float, default=600.0, help="deadline per request, s")
    traffic.add_argument("--temperature", type=float, help="sampling temperature (default: the service's, greedy)")
    traffic.add_argument("--request-id-prefix", help="request ids are PREFIX + index (default bench-RANDOM-)")

    data = p.add_argument_group("dataset")
    data.add_argument("--dataset", choices=["random", "jsonl"], default="random")
    data.add_argument("--dataset-path", type=Path, help="JSONL of {messages} or {prompt} lines (--dataset jsonl)")
    data.add_argument("--jsonl-output-len", type=int, default=0,
                      help="max_tokens for JSONL lines without one (default 0: the service default)")
    data.add_argument("--random-input-len", type=int, help="prompt tokens (default 1024; client-capacity 64)")
    data.add_argument("--random-output-len", type=int, help="max_tokens (default 128; client-capacity 16)")
    data.add_argument("--random-range-ratio", type=float, default=0.0)
    data.add_argument("--tokenizer", default="auto",
                      help="random prompts: 'auto' (the served model's if it is on this machine), 'none' (words) "
                           "or a tokenizer directory")

    report = p.add_argument_group("results")
    report.add_argument("--goodput", nargs="+", metavar="NAME:MS", help="SLOs: ttft:MS tpot:MS e2el:MS")
    report.add_argument("--metric-percentiles", default="99", help="e.g. 50,90,99 (default 99)")
    report.add_argument("--save-result", action="store_true",
                        help="write the result JSON (sweep and step always write theirs, with PNGs)")
    report.add_argument("--result-dir", type=Path, help="where results and plots go (default: current directory)")
    report.add_argument("--result-filename", help="result file name (one benchmark)")
    report.add_argument("--save-detailed", action="store_true", help="add per-request lists to the JSON")
    report.add_argument("--label", help="result label (file name prefix)")
    report.add_argument("--disable-tqdm", action="store_true", help="no live progress line")

    sweep = p.add_argument_group("sweep / client-capacity")
    sweep.add_argument("--rates", help="comma-separated request rates, e.g. 1,2,4,8")
    sweep.add_argument("--attainment-target", type=float, help="SLO attainment %% to meet (sweep; default 90)")
    step = p.add_argument_group("step")
    step.add_argument("--stages", help='JSON list: [{"rate": R, "duration": S}, ...] (rate 0 = idle)')
    step.add_argument("--window-s", type=float, help="latency window in the step report, s (default 5)")
    soak = p.add_argument_group("soak (Poisson at --request-rate; see loadtest/soak.py for the verdict)")
    soak.add_argument("--duration-min", type=float, help="minutes of load (requests generated until then)")
    soak.add_argument("--sample-every-s", type=float, help="seconds between samples (default 5)")
    soak.add_argument("--metrics-url", help="the service's Prometheus endpoint (default "
                                            "http://127.0.0.1:8080/metrics; 'none' = do not scrape)")
    soak.add_argument("--drain-s", type=float, help="after the load, sample until leases and KV use are 0, at most "
                                                    "this long (default 60)")
    soak.add_argument("--max-rss-growth-mib-per-min", type=float,
                      help="RSS growth allowed per role over the second half (default 1)")
    soak.add_argument("--max-lease-growth-per-min", type=float,
                      help="upward trend allowed in leases held during the load (default 0.1)")
    capacity = p.add_argument_group("client-capacity")
    capacity.add_argument("--seconds-per-rate", type=float, help="run length per rate (default 10)")
    capacity.add_argument("--stub-ttft-ms", type=float, help="stub server TTFT (default 50)")
    capacity.add_argument("--stub-itl-ms", type=float, help="stub server ITL (default 20)")
    capacity.add_argument("--compare-rps", type=float,
                          help="the service's measured max rate, to print the client's headroom over it")
    p.set_defaults(run=run)


def check_mode_flags(args: argparse.Namespace) -> None:
    for dest, modes in MODE_ONLY.items():
        if getattr(args, dest) is not None and args.mode not in modes:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} is for `overfill loadtest {' / '.join(modes)}`, not `{args.mode}`")
    if args.mode != "client-capacity" and not args.target:
        raise ValueError(f"`overfill loadtest {args.mode}` needs --target HOST:PORT")


def parse_rates(text: str | None, flag: str = "--rates") -> list[float]:
    if not text:
        raise ValueError(f"{flag} is required, e.g. {flag} 1,2,4,8")
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise ValueError(f"{flag} takes comma-separated numbers, got {text!r}") from e
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise ValueError(f"{flag}: every rate must be a finite number > 0, got {text!r}")
    return sorted(set(rates))


def benchmark_config(args: argparse.Namespace, target: str | None = None):
    from loadtest.benchmark import BenchmarkConfig
    from loadtest.client import Connection, default_api_key
    from loadtest.datasets import RandomSpec
    from loadtest.metrics import parse_goodput, parse_percentiles

    connection = Connection(target or args.target, args.api_key or default_api_key(), args.tls_ca,
                            args.tls_server_name, args.backend or "grpc")
    extra = {"request_id_prefix": args.request_id_prefix} if args.request_id_prefix else {}
    return BenchmarkConfig(
        connection, args.dataset, RandomSpec(_or(args.random_input_len, 1024), _or(args.random_output_len, 128),
                                             args.random_range_ratio),
        args.dataset_path, args.jsonl_output_len, args.tokenizer, args.max_concurrency, args.num_warmups, args.seed,
        parse_goodput(args.goodput), parse_percentiles(args.metric_percentiles), args.request_timeout,
        args.temperature, args.label, ready_timeout_s=args.ready_check_timeout_sec,
        show_progress=not args.disable_tqdm, save_detailed=args.save_detailed, **extra)


def ramp_up_of(args: argparse.Namespace):
    from loadtest.arrivals import RampUp

    given = [args.ramp_up_start_rps is not None, args.ramp_up_end_rps is not None]
    if args.ramp_up_strategy is None:
        if any(given):
            raise ValueError("--ramp-up-start-rps/--ramp-up-end-rps need --ramp-up-strategy linear|exponential")
        return None
    if not all(given):
        raise ValueError("--ramp-up-strategy needs both --ramp-up-start-rps and --ramp-up-end-rps")
    if args.request_rate != math.inf:
        raise ValueError("--request-rate and --ramp-up-strategy exclude each other (the ramp sets the rate)")
    return RampUp(args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps)


def _or(value, default):
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    check_mode_flags(args)
    args.num_prompts = _or(args.num_prompts, 100)
    args.request_rate = _or(args.request_rate, math.inf)
    args.burstiness = _or(args.burstiness, 1.0)
    return {"run": run_one, "sweep": run_sweep, "step": run_step, "soak": run_soak,
            "client-capacity": run_capacity}[args.mode](args)


def run_one(args: argparse.Namespace) -> int:
    from loadtest.arrivals import send_times
    from loadtest.benchmark import Benchmark
    from loadtest.result import format_table, save_result

    ramp_up = ramp_up_of(args)
    send = send_times(args.num_prompts, args.request_rate, args.burstiness, ramp_up, args.seed)
    bench = Benchmark(benchmark_config(args))
    _describe(bench, args, ramp_up)
    setup = {"request_rate": args.request_rate, "burstiness": args.burstiness}
    if ramp_up is not None:
        setup.update(ramp_up_strategy=ramp_up.strategy, ramp_up_start_rps=ramp_up.start_rps,
                     ramp_up_end_rps=ramp_up.end_rps)
    measured = bench.run(bench.samples(args.num_prompts, args.seed), send, setup)
    print(format_table(measured.result))
    if args.save_result:
        print(f"saved {save_result(measured.result, args.result_dir, args.result_filename)}")
    return 0


def _describe(bench, args: argparse.Namespace, ramp_up) -> None:
    source = bench.token_source
    data = (f"random prompts, lengths from the tokenizer at {bench.tokenizer_id}" if source == "tokenizer" else
            "random prompts from a word vocabulary (no tokenizer here: input lengths are estimates, one word "
            "~ one token)") if args.dataset == "random" else f"JSONL {args.dataset_path}"
    traffic = (f"ramp-up {ramp_up.strategy} {ramp_up.start_rps} -> {ramp_up.end_rps} req/s" if ramp_up else
               f"request rate {args.request_rate} req/s, burstiness {args.burstiness}"
               f"{' (Poisson)' if args.burstiness == 1 else ' (gamma)'}")
    print(f"target {args.target} (model {bench.info.full_model}); {data}; {traffic}; "
          f"max concurrency {args.max_concurrency or 'unlimited'}", file=sys.stderr)


def run_sweep(args: argparse.Namespace) -> int:
    from loadtest.benchmark import Benchmark
    from loadtest.sweep import format_sweep, run_sweep as sweep, save_sweep

    rates = parse_rates(args.rates)
    if not args.goodput:
        raise ValueError("sweep needs --goodput NAME:MS ... (the SLOs whose attainment it measures)")
    bench = Benchmark(benchmark_config(args))
    _describe(bench, args, None)
    target_pct = 90.0 if args.attainment_target is None else args.attainment_target
    if not 0 < target_pct <= 100:
        raise ValueError(f"--attainment-target must be in (0, 100], got {target_pct}")
    outcome = sweep(bench, rates, args.num_prompts, args.burstiness, args.seed, target_pct)
    print(format_sweep(outcome))
    for path in save_sweep(outcome, args.result_dir):
        print(f"saved {path}")
    return 0


def run_step(args: argparse.Namespace) -> int:
    from loadtest.arrivals import parse_stages
    from loadtest.benchmark import Benchmark
    from loadtest.step import format_step, run_step as step, save_step

    if not args.stages:
        raise ValueError('step needs --stages \'[{"rate": R, "duration": S}, ...]\'')
    try:
        stages = parse_stages(json.loads(args.stages))
    except json.JSONDecodeError as e:
        raise ValueError(f"--stages is not valid JSON ({e.msg})") from e
    window_s = 5.0 if args.window_s is None else args.window_s
    if not window_s > 0:
        raise ValueError(f"--window-s must be > 0, got {window_s}")
    bench = Benchmark(benchmark_config(args))
    outcome = step(bench, stages, args.burstiness, args.seed, window_s)
    print(format_step(outcome))
    for path in save_step(outcome, args.result_dir):
        print(f"saved {path}")
    return 0


def run_soak(args: argparse.Namespace) -> int:
    """Exit status 0 only when the verdict is pass (1: fail or incomplete)."""
    from loadtest.benchmark import Benchmark
    from loadtest.soak import SoakSpec, format_soak, run_soak as soak, save_soak

    if args.request_rate == math.inf:
        raise ValueError("soak needs --request-rate R (requests/s; e.g. 80% of the sweep's goodput rate)")
    if args.duration_min is None:
        raise ValueError("soak needs --duration-min M")
    url = _or(args.metrics_url, "http://127.0.0.1:8080/metrics")
    spec = SoakSpec(args.request_rate, args.duration_min, args.burstiness, args.seed, _or(args.sample_every_s, 5.0),
                    None if url.lower() == "none" else url, _or(args.drain_s, 60.0),
                    _or(args.max_rss_growth_mib_per_min, 1.0), _or(args.max_lease_growth_per_min, 0.1))
    bench = Benchmark(benchmark_config(args))
    _describe(bench, args, None)
    outcome = soak(bench, spec)
    print(format_soak(outcome))
    for path in save_soak(outcome, args.result_dir):
        print(f"saved {path}")
    return 0 if outcome.verdict["verdict"] == "pass" else 1


def run_capacity(args: argparse.Namespace) -> int:
    from loadtest.capacity import CapacitySpec, format_capacity, measure_capacity, save_capacity

    if args.target:
        raise ValueError("client-capacity starts its own stub server; --target is not used")
    rates = parse_rates(args.rates or "10,25,50,100")
    spec = CapacitySpec(rates=rates, seconds_per_rate=args.seconds_per_rate or 10.0,
                        stub_ttft_ms=50.0 if args.stub_ttft_ms is None else args.stub_ttft_ms,
                        stub_itl_ms=20.0 if args.stub_itl_ms is None else args.stub_itl_ms,
                        input_len=_or(args.random_input_len, 64), output_len=_or(args.random_output_len, 16),
                        max_concurrency=args.max_concurrency, seed=args.seed, compare_rps=args.compare_rps,
                        show_progress=not args.disable_tqdm)
    outcome = measure_capacity(spec)
    print(format_capacity(outcome))
    if args.save_result:
        print(f"saved {save_capacity(outcome, args.result_dir)}")
    return 0

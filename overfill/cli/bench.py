"""`overfill bench`: runnable benchmarks that print a table and save JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (tables + JSON)")
    sub = p.add_subparsers(dest="bench_command", required=True)
    decode = sub.add_parser("decode", help="prefill ms and TPOT per mode vs the weight-bytes roofline")
    decode.add_argument("--model", default="smollm2-135m")
    decode.add_argument("--decoder", help="decoder directory or 'default' (the default for smollm2-135m)")
    decode.add_argument("--batch-sizes", type=_int_list, default=[1, 8])
    decode.add_argument("--prompt-len", type=int, default=512)
    decode.add_argument("--gen-len", type=int, default=128)
    decode.add_argument("--modes", default="full,overfill,pruned")
    decode.add_argument("--repeats", type=int, default=3, help="measured runs per cell (after one warm-up)")
    decode.add_argument("--dtype", default="auto")
    decode.add_argument("--device", default="cpu")
    decode.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="on CUDA, replay decode steps from CUDA graphs (default on; ignored on CPU)")
    decode.add_argument("--temperature", type=float, default=0.0,
                        help="> 0: also run every cell sampled, next to greedy, and report sampled/greedy tokens/s")
    decode.add_argument("--top-p", type=float, default=1.0)
    decode.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    decode.add_argument("--seed", type=int, help="row i of a batch samples with SEED + i (default: fresh seeds)")
    decode.add_argument("--json", type=Path, help="write the results here")
    decode.set_defaults(run=run_decode)

    transfer = sub.add_parser("transfer", help="KV pull GB/s and latency per size vs a local copy")
    transfer.add_argument("--transport", default="grpc", choices=["grpc", "gloo", "nccl", "inprocess"],
                          help="grpc (default); gloo (process group on the host); nccl (GPU to GPU, needs two GPUs)")
    transfer.add_argument("--sizes", type=lambda t: [float(x) for x in t.split(",") if x], default=[1, 16, 64, 256],
                          help="KV sizes in MB (default 1,16,64,256)")
    transfer.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    transfer.add_argument("--repeats", type=int, default=5)
    transfer.add_argument("--json", type=Path, help="write the results here")
    transfer.set_defaults(run=run_transfer)

    memory = sub.add_parser("prefill-memory", help="prefill RSS under prompts of every length, per oneDNN cache "
                                                   "bound (table, JSON, PNG)")
    memory.add_argument("--model", default="smollm2-135m")
    memory.add_argument("--cache-entries", type=_int_list, default=[0, 64],
                        help="variants: entries per oneDNN cache, 0 = the defaults (default 0,64)")
    memory.add_argument("--num-requests", type=int, default=600)
    memory.add_argument("--prompt-lens", default="96-160", help="MIN-MAX prompt tokens (default 96-160)")
    memory.add_argument("--max-batch", type=int, default=4)
    memory.add_argument("--warmup", type=int, default=50, help="requests before the 'RSS warm' column")
    memory.add_argument("--seed", type=int, default=0)
    memory.add_argument("--json", type=Path, help="write the results here (and the plot next to it, .png)")
    memory.set_defaults(run=run_prefill_memory)

    decoders = sub.add_parser("decoders", help="accuracy/agreement/TPOT of decoders by parameter fraction: "
                                               "reconstruction, training and the Pruned baseline (table, JSON, PNG)")
    decoders.add_argument("--model", default="smollm2-135m")
    decoders.add_argument("--fractions", type=lambda t: [float(x) for x in t.split(",") if x],
                          default=[0.5, 0.6, 0.7, 0.8])
    decoders.add_argument("--work", type=Path, required=True,
                          help="directory for the decoders and scores (an interrupted run resumes from it)")
    decoders.add_argument("--tasks", help="eval tasks JSONL (default: the shipped eval tasks)")
    decoders.add_argument("--steps", type=int, help="training steps per decoder (default: the default recipe's)")
    decoders.add_argument("--data", help="JSONL conversations to train on (default: the shipped set)")
    decoders.add_argument("--calibration", action="append",
                          help="calibration JSONL, repeatable (default: the shipped calibration set and the data)")
    decoders.add_argument("--max-new-tokens", type=int, default=32)
    decoders.add_argument("--json", type=Path, help="write the results here (and the plot next to it, .png)")
    decoders.set_defaults(run=run_decoders)

    service = sub.add_parser("service", help="service TTFT and decode throughput vs in-process, KV transfer GB/s; "
                                             "with --compare-decoder, the service with two decoders side by side")
    service.add_argument("--config", default="deploy/local.yaml")
    service.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    service.add_argument("--prompt-lens", type=_int_list, default=[128, 512, 2048])
    service.add_argument("--concurrency", type=_int_list,
                         help="concurrent streams (default 1,4,16; with --compare-decoder one value, default 12)")
    service.add_argument("--gen-len", type=int, default=64)
    service.add_argument("--repeats", type=int, default=3)
    compare = service.add_argument_group("--compare-decoder: same config and load, two decoders (JSON + PNG)")
    compare.add_argument("--compare-decoder", metavar="PATH|full",
                         help="the baseline decoder; 'full': the full-width identity decoder (built once)")
    compare.add_argument("--decoder", help="the decoder under test (default: the config's models.decoder)")
    compare.add_argument("--num-prompts", type=int, default=48)
    compare.add_argument("--rounds", type=int, default=2, help="service runs per decoder, alternating A B B A")
    compare.add_argument("--input-len", type=int, default=128, help="random prompt tokens")
    compare.add_argument("--output-len", type=int, default=96, help="max_tokens (random prompts rarely stop early)")
    compare.add_argument("--tpot-slo-ms", type=float, default=100.0, help="goodput: mean TPOT within this")
    service.add_argument("--json", type=Path, help="write the results here")
    service.set_defaults(run=run_service)

    overload = sub.add_parser("overload", help="bursts of many times what the service admits: refusal latency and "
                                               "replica memory against thresholds (exit 1 past them)")
    overload.add_argument("--config", default="deploy/local.yaml")
    overload.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                          help="after the bench's small queues (overfill/bench/overload.py SMALL_LIMITS)")
    overload.add_argument("--multiple", type=int, default=10, help="a burst is this many times the capacity")
    overload.add_argument("--bursts", type=int, default=2, help="bursts (>= 2: memory is compared to the first's)")
    overload.add_argument("--max-refusal-p50-s", type=float, default=1.0)
    overload.add_argument("--max-rss-growth-mib", type=float, default=48.0)
    overload.add_argument("--json", type=Path, help="write the results here")
    overload.set_defaults(run=run_overload)


def run_decode(args: argparse.Namespace) -> int:
    from overfill.bench.decode import DecodeBenchSpec, format_report, run_decode_bench

    spec = DecodeBenchSpec(model=args.model, decoder=args.decoder, batch_sizes=args.batch_sizes,
                           prompt_len=args.prompt_len, gen_len=args.gen_len, modes=args.modes.split(","),
                           repeats=args.repeats, dtype=args.dtype, device=args.device, cuda_graphs=args.cuda_graphs,
                           temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    result = run_decode_bench(spec)
    print(format_report(result))
    _save(result, args.json)
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    from overfill.bench.transfer import TransferBenchSpec, format_report, run_transfer_bench

    result = run_transfer_bench(TransferBenchSpec(transport=args.transport, sizes_mb=args.sizes, dtype=args.dtype,
                                                  repeats=args.repeats))
    print(format_report(result))
    _save(result, args.json)
    return 0


def run_prefill_memory(args: argparse.Namespace) -> int:
    from overfill.bench.prefill_memory import PrefillMemorySpec, format_report, plot, run_prefill_memory_bench

    min_len, _, max_len = args.prompt_lens.partition("-")
    spec = PrefillMemorySpec(model=args.model, cache_entries=args.cache_entries, num_requests=args.num_requests,
                             min_len=int(min_len), max_len=int(max_len or min_len), max_batch=args.max_batch,
                             warmup=args.warmup, seed=args.seed)
    result = run_prefill_memory_bench(spec)
    _report(result, format_report, args.json, plot)
    return 0


def run_overload(args: argparse.Namespace) -> int:
    from overfill.bench.overload import OverloadBenchSpec, format_report, run_overload_bench

    spec = OverloadBenchSpec(config=args.config, overrides=args.overrides, multiple=args.multiple,
                             bursts=args.bursts, max_refusal_p50_s=args.max_refusal_p50_s,
                             max_rss_growth_mib=args.max_rss_growth_mib)
    result = run_overload_bench(spec)
    print(format_report(result))
    _save(result, args.json)
    return 0 if all(check["pass"] for check in result["checks"].values()) else 1


def _report(result: dict, format_report, path: Path | None, plot) -> None:
    """Print the table; with `path`, save the JSON there and the plot next to it (.png)."""
    print(format_report(result))
    _save(result, path)
    if path:
        plot(result, path.with_suffix(".png"))
        print(f"saved {path.with_suffix('.png')}")


def _save(result: dict, path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"saved {path}")


def run_decoders(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from importlib import resources

    from overfill.bench.decoders import DecodersBenchSpec, format_report, plot_decoders, run_decoders_bench
    from overfill.default_decoder import DEFAULT_RECIPE

    overrides = {name: getattr(args, name) for name in ("steps", "data") if getattr(args, name)}
    if args.calibration:
        overrides["calibration"] = tuple(args.calibration)
    base = replace(DEFAULT_RECIPE, model=args.model, **overrides)
    tasks = args.tasks or str(resources.files("overfill") / "data" / "eval_tasks.jsonl")
    result = run_decoders_bench(DecodersBenchSpec(fractions=args.fractions, work=args.work, tasks=tasks, base=base,
                                                  max_new_tokens=args.max_new_tokens))
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        plot_decoders(result, args.json.with_suffix(".png"))
        print(f"saved {args.json} and {args.json.with_suffix('.png')}")
    return 0


def run_service(args: argparse.Namespace) -> int:
    if args.compare_decoder:
        return run_service_compare(args)
    from overfill.bench.service import ServiceBenchSpec, format_report, run_service_bench

    result = run_service_bench(ServiceBenchSpec(config=args.config, overrides=args.overrides,
                                                prompt_lens=args.prompt_lens, concurrency=args.concurrency or [1, 4, 16],
                                                gen_len=args.gen_len, repeats=args.repeats))
    print(format_report(result))
    _save(result, args.json)
    return 0


def run_service_compare(args: argparse.Namespace) -> int:
    from overfill.bench.service_compare import CompareSpec, format_report, plot, run_compare

    if args.concurrency and len(args.concurrency) != 1:
        raise SystemExit("--compare-decoder runs one load: give --concurrency one value")
    spec = CompareSpec(compare_decoder=args.compare_decoder, decoder=args.decoder, config=args.config,
                       overrides=args.overrides, concurrency=(args.concurrency or [12])[0],
                       num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
                       tpot_slo_ms=args.tpot_slo_ms, rounds=args.rounds)
    result = run_compare(spec)
    _report(result, format_report, args.json, plot)
    return 0 if not any(run["failed"] for run in result["runs"]) else 1

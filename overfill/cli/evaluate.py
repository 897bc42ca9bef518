"""`overfill eval`: score modes and decoders on tasks with verifiable answers; table, JSON and a Pareto plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy, agreement with the full model, TPOT and TTFT per mode")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--decoder", required=True, help="decoder directories, comma separated ('default' allowed)")
    p.add_argument("--tasks", help="JSONL of {messages, answer, match} (default: the shipped eval tasks)")
    p.add_argument("--modes", default="full,pruned,overfill", help="any of full,pruned,overfill,speculative")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--refresh-every", type=int, default=0, help="also run overfill with prefill refresh every N tokens")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="write accuracy vs TPOT here (PNG)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from importlib import resources

    from overfill.evaluation import EvalSpec, format_report, plot_pareto, run_eval

    tasks = args.tasks or str(resources.files("overfill") / "data" / "eval_tasks.jsonl")
    result = run_eval(EvalSpec(model=args.model, decoders=args.decoder.split(","), tasks=tasks,
                               modes=args.modes.split(","), max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, refresh_every=args.refresh_every, device=args.device))
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"saved {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_pareto(result, args.plot)
        print(f"saved {args.plot}")
    return 0

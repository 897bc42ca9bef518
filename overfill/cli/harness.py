"""`overfill lm-eval ARGS...`: lm-evaluation-harness's own CLI, run with the two-stage `overfill` model registered.

lm-eval 0.4 discovers no third-party models (no plugin entry points): `--model overfill` resolves only in a process
that imported `overfill.lm_eval_model`. This command is that process; every argument goes to lm-eval unchanged, so
`overfill lm-eval --model overfill --model_args model=...,decoder=... --tasks ...` is `lm_eval` with our model.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    # NOTE: prefix_chars="\0" and no -h: this parser knows no options, so every argument (--model, --help, ...)
    # lands in `args` and reaches lm-eval as typed.
    p = subparsers.add_parser("lm-eval", add_help=False, prefix_chars="\0",
                              help="lm-evaluation-harness with the two-stage `overfill` model (needs the lmeval extra)",
                              description="Arguments are lm-eval's own; see `overfill lm-eval --help`.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm-eval arguments")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import overfill.lm_eval_model  # noqa: F401  registers the model "overfill"
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        raise ValueError(f"{e}; install it with: pip install 'overfill[lmeval]'") from e

    saved, sys.argv = sys.argv, ["lm-eval", *args.args]  # lm-eval's CLI parses sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0

"""The `overfill` command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import logging
import sys

from overfill.cli import bench, decoder, evaluate, generate, harness, loadtest, prune, serve, train

COMMANDS = (prune, generate, decoder, train, evaluate, harness, serve, bench, loadtest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overfill", description="OverFill Serve: two-stage LLM inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"overfill {args.command}: error: {e}", file=sys.stderr)
        return 2


def quiet_libraries() -> None:
    """transformers prints a progress bar for every weight load; keep the terminal for our own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())

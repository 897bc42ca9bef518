"""`overfill decoder`: the embedded model's default decoder, and what a decoder directory holds."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("decoder", help="build or inspect decoders")
    sub = p.add_subparsers(dest="decoder_command", required=True)
    default = sub.add_parser("default", help="print the default decoder's directory, building it if missing")
    default.add_argument("--rebuild", action="store_true", help="build it again (prune and train) even if it exists")
    default.set_defaults(run=run_default)
    info = sub.add_parser("info", help="print a decoder's overfill.json summary")
    info.add_argument("path", help="decoder directory or 'default'")
    info.set_defaults(run=run_info)


def run_default(args: argparse.Namespace) -> int:
    from overfill.default_decoder import ensure_default_decoder

    print(ensure_default_decoder(rebuild=args.rebuild))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from overfill.decoder_checkpoint import read_manifest
    from overfill.default_decoder import default_decoder_dir

    path = default_decoder_dir() if args.path == "default" else args.path
    manifest = read_manifest(path)
    summary = {
        "path": str(path),
        "full_model": manifest.full_model.source,
        "hidden_size": [manifest.full_model.hidden_size, manifest.hidden_size],
        "intermediate_size": [manifest.full_model.intermediate_size, manifest.intermediate_size],
        "parameters": [manifest.full_model.num_parameters, manifest.num_parameters],
        "parameter_fraction": round(manifest.parameter_fraction, 4),
        "calibration": manifest.calibration,
        "training": manifest.training,
    }
    print(json.dumps(summary, indent=2))
    return 0

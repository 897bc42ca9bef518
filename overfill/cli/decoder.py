"""`overfill decoder`: build a decoder from a recipe (any parameter fraction, or the embedded model's default), and
what a decoder directory holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from overfill.model_loading import EMBEDDED_ALIAS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("decoder", help="build or inspect decoders")
    sub = p.add_subparsers(dest="decoder_command", required=True)
    default = sub.add_parser("default", help="print the default decoder's directory, building it if missing")
    default.add_argument("--rebuild", action="store_true", help="build it again (prune and train) even if it exists")
    default.set_defaults(run=run_default)
    build = sub.add_parser("build", help="prune + reconstruct + train a decoder of a parameter fraction (resumable)",
                           description="The default decoder's recipe at another size: widths for --fraction of the "
                                       "full model's parameters (the MLP cut first), reconstructed and trained in "
                                       "overfill mode on the shipped self-distillation data unless told otherwise.")
    build.add_argument("--fraction", type=float, required=True, help="decoder parameters / full model parameters")
    build.add_argument("--output", type=Path, required=True, help="decoder directory to write")
    build.add_argument("--model", default=EMBEDDED_ALIAS, help="local Hugging Face directory or 'smollm2-135m'")
    build.add_argument("--data", help="JSONL conversations to train on (default: the shipped set)")
    build.add_argument("--calibration", action="append", help="calibration JSONL, repeatable (default: the shipped "
                       "calibration set and the training data)")
    build.add_argument("--steps", type=int, help="training steps (default: the default recipe's)")
    build.add_argument("--reconstruct", choices=["none", "bias", "lstsq"], help="default: the default recipe's")
    build.add_argument("--rebuild", action="store_true", help="start over even if an interrupted build exists")
    build.set_defaults(run=run_build)
    info = sub.add_parser("info", help="print a decoder's overfill.json summary")
    info.add_argument("path", help="decoder directory or 'default'")
    info.set_defaults(run=run_info)


def run_default(args: argparse.Namespace) -> int:
    from overfill.default_decoder import ensure_default_decoder

    print(ensure_default_decoder(rebuild=args.rebuild))
    return 0


def run_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from transformers import AutoConfig

    from overfill.decoder_recipe import build_from_recipe, count_parameters, recipe_for_fraction
    from overfill.default_decoder import DEFAULT_RECIPE
    from overfill.model_loading import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(args.model))
    recipe = recipe_for_fraction(config, args.fraction, replace(DEFAULT_RECIPE, model=args.model))
    overrides = {name: getattr(args, name) for name in ("data", "steps", "reconstruct") if getattr(args, name)}
    if args.calibration:
        overrides["calibration"] = tuple(args.calibration)
    recipe = replace(recipe, **overrides)
    size = count_parameters(config, recipe.hidden_size, recipe.intermediate_size)
    full = count_parameters(config, config.hidden_size, config.intermediate_size)
    print(f"decoder of {size / 1e6:.1f}M parameters ({size / full:.1%}): hidden {config.hidden_size} -> "
          f"{recipe.hidden_size}, MLP {config.intermediate_size} -> {recipe.intermediate_size}")
    print(build_from_recipe(recipe, args.output, rebuild=args.rebuild))
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
        "reconstruction": manifest.reconstruction,
        "training": manifest.training,
        "recipe": manifest.recipe,
    }
    print(json.dumps(summary, indent=2))
    return 0

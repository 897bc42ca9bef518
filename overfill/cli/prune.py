"""`overfill prune`: calibrate and width-prune a full model into a decoder directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("prune", help="calibrate and width-prune a full model into a decoder",
                              description="Calibrate MODEL on text, keep the most important channels, reconstruct "
                                          "what was cut and write a decoder directory (Hugging Face checkpoint + "
                                          "overfill.json).")
    p.add_argument("--model", required=True, help="local Hugging Face directory or 'smollm2-135m'")
    p.add_argument("--hidden-size", type=int, required=True, help="decoder residual width D'")
    p.add_argument("--intermediate-size", type=int, required=True, help="decoder MLP width I' (every layer)")
    p.add_argument("--calibration", type=Path, action="append",
                   help="JSONL of {\"text\"} or {\"messages\"} lines; repeat for several files (default: the shipped "
                        "set). A chat ending with an assistant turn calibrates on that turn, as the decoder decodes it")
    p.add_argument("--num-samples", type=int, help="use the first N samples (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512, help="tokens per calibration sample")
    p.add_argument("--reconstruct", choices=["none", "bias", "lstsq"], default="lstsq",
                   help="re-fit what the cut removed: lstsq (every linear, by ridge regression on the decoder's own "
                        "inputs; default), bias (FLAP mean compensation; Llama), none (plain slicing)")
    p.add_argument("--ridge", type=float, default=1e-2, help="lstsq ridge, relative to the mean input energy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, required=True, help="decoder directory to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from overfill.build_decoder import PruneSpec, build_decoder

    manifest = build_decoder(PruneSpec(
        model=args.model, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        output=args.output, calibration=args.calibration, num_samples=args.num_samples,
        batch_size=args.batch_size, max_length=args.max_length, reconstruct=args.reconstruct, ridge=args.ridge,
        device=args.device,
    ))
    full = manifest.full_model
    print(f"decoder written to {args.output}")
    print(f"  hidden {full.hidden_size} -> {manifest.hidden_size}, "
          f"intermediate {full.intermediate_size} -> {manifest.intermediate_size}")
    print(f"  parameters {full.num_parameters / 1e6:.1f}M -> {manifest.num_parameters / 1e6:.1f}M "
          f"({100 * manifest.parameter_fraction:.1f}%)")
    print(f"  calibration: {manifest.calibration['num_samples']} samples, {manifest.calibration['num_tokens']} tokens "
          f"from {', '.join(manifest.calibration['sources'])}")
    errors = manifest.reconstruction["layer_error"]
    print(f"  reconstruction: {manifest.reconstruction['method']}, {manifest.reconstruction['num_decoded_tokens']} "
          f"decoded tokens; relative error after the last layer {errors[-1]:.3f} (mean over layers "
          f"{sum(errors) / len(errors):.3f})")
    return 0

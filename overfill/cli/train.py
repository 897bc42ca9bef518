"""`overfill make-data` and `overfill train`."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    make = subparsers.add_parser("make-data", help="answer a prompt set with the full model (self-distillation)")
    make.add_argument("--model", default="smollm2-135m")
    make.add_argument("--prompts", default=None, help="JSONL of {\"messages\": [...]} (default: the shipped set)")
    make.add_argument("--output", required=True)
    make.add_argument("--max-new-tokens", type=int, default=256)
    make.add_argument("--batch-size", type=int, default=8)
    make.add_argument("--temperature", type=float, default=0.0)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--device", default="cpu")
    make.set_defaults(run=run_make_data)

    train = subparsers.add_parser("train", help="train a decoder (overfill: on the frozen full model's prompt KV)")
    train.add_argument("--model", default="smollm2-135m")
    train.add_argument("--decoder", required=True, help="decoder directory to start from, or 'default'")
    train.add_argument("--data", required=True, help="JSONL conversations (OpenAI messages or ShareGPT)")
    train.add_argument("--mode", choices=["overfill", "pruned"], default="overfill")
    train.add_argument("--output", required=True, help="directory for the trained decoder and its checkpoint")
    train.add_argument("--steps", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--warmup-steps", type=int)
    train.add_argument("--kd-weight", type=float, default=0.0, help="weight of KL to the full model's distribution")
    train.add_argument("--max-length", type=int, default=1024)
    train.add_argument("--save-every", type=int, default=50)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt, bit for bit")
    train.set_defaults(run=run_train)


def run_make_data(args: argparse.Namespace) -> int:
    from importlib import resources

    from overfill.training.make_data import MakeDataSpec, make_data

    prompts = args.prompts or str(resources.files("overfill") / "data" / "prompts.jsonl")
    result = make_data(MakeDataSpec(args.model, prompts, args.output, args.max_new_tokens, args.batch_size,
                                    args.temperature, args.seed, device=args.device))
    print(json.dumps(result))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from overfill.training.trainer import TrainSpec, train

    spec = TrainSpec(model=args.model, decoder=args.decoder, data=args.data, mode=args.mode, output=args.output,
                     steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                     warmup_steps=args.warmup_steps, kd_weight=args.kd_weight, max_length=args.max_length,
                     seed=args.seed, save_every=args.save_every, device=args.device)
    result = train(spec, resume=args.resume)
    last = result["history"][-1] if result["history"] else {}
    print(f"decoder written to {result['output']}: final loss {last.get('ce', float('nan')):.4f}, "
          f"{result['tokens']} response tokens in {result['seconds']:.0f} s "
          f"({result['tokens'] / max(result['seconds'], 1e-9):.0f} tokens/s)")
    return 0

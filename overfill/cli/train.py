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
    train.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch per worker")
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--warmup-steps", type=int)
    train.add_argument("--kd-weight", type=float, default=0.0, help="weight of KL to the full model's distribution")
    train.add_argument("--ce-weight", type=float, default=1.0, help="weight of cross-entropy on the response")
    train.add_argument("--trainable", default="all", help="which decoder weights train: all, no-embeddings or mlp")
    train.add_argument("--max-length", type=int, default=1024)
    train.add_argument("--save-every", type=int, default=50)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu (default) or cuda")
    train.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                       help="bf16 autocast (float32 weights) or float32; auto: bf16 where the GPU or CPU computes it "
                            "natively (AVX512-BF16, AMX)")
    train.add_argument("--num-workers", type=int, default=1,
                       help="data-parallel workers; above 1, on Ray Train (global batch: batch x accum x workers)")
    train.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL): --device cuda")
    train.add_argument("--max-failures", type=int, default=0,
                       help="with --num-workers > 1: times Ray may restart the workers from the latest checkpoint")
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
    from overfill.training.trainer import train

    spec = train_spec_of(args)
    if spec.num_workers > 1:
        from overfill.training.distributed import train_on_ray

        result = train_on_ray(spec, resume=args.resume, max_failures=args.max_failures)
    else:
        result = train(spec, resume=args.resume)
    last = result["history"][-1] if result["history"] else {}
    print(f"decoder written to {result['output']}: final loss {last.get('ce', float('nan')):.4f}, "
          f"{result['tokens']} response tokens in {result['seconds']:.0f} s "
          f"({result['tokens'] / max(result['seconds'], 1e-9):.0f} tokens/s)")
    return 0


def train_spec_of(args: argparse.Namespace):
    """The TrainSpec that `overfill train ARGS` runs (deploy/kuberay/train-rayjob.yaml is checked through it)."""
    from overfill.training.trainer import TrainSpec

    if args.use_gpu and args.device not in (None, "cuda"):
        raise ValueError(f"--use-gpu trains on cuda, but --device is {args.device!r}")
    if args.max_failures < 0:
        raise ValueError(f"--max-failures must be >= 0, got {args.max_failures}")
    return TrainSpec(model=args.model, decoder=args.decoder, data=args.data, mode=args.mode, output=args.output,
                     steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                     warmup_steps=args.warmup_steps, kd_weight=args.kd_weight, ce_weight=args.ce_weight,
                     trainable=args.trainable, max_length=args.max_length, seed=args.seed,
                     save_every=args.save_every, device="cuda" if args.use_gpu else (args.device or "cpu"),
                     num_workers=args.num_workers, precision=args.precision)

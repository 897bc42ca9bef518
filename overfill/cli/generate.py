"""`overfill generate`: two-stage generation in process, streamed to the terminal or as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from overfill.engine.generate import Mode


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text in process (overfill, full or pruned mode)",
                              description="Prefill with the full model, decode with the decoder (overfill); or use "
                                          "one model for both stages (full, pruned). Several prompts run as one batch.")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--model", default="smollm2-135m", help="local Hugging Face directory or 'smollm2-135m' (default)")
    p.add_argument("--decoder", help="decoder directory or 'default' (the default for smollm2-135m)")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.OVERFILL.value)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut (default)")
    p.add_argument("--seed", type=int, help="sampling seed (token i of each prompt draws from (seed, i))")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="render each prompt as one user message with the chat template (default: when the model has one)")
    p.add_argument("--refresh-every", type=int, default=0,
                   help="overfill mode: every N decoded tokens the full model re-reads them and replaces their KV")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of streaming text")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from overfill.engine.detokenize import IncrementalDetokenizer
    from overfill.engine.loader import load_engine
    from overfill.engine.sampling import SamplingParams
    from overfill.prompts import encode_prompt

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            max_new_tokens=args.max_new_tokens)
    loaded = load_engine(args.model, args.decoder, [args.mode], dtype=args.dtype, device=args.device)
    tokenizer = loaded.tokenizer
    prompts = [encode_prompt(tokenizer, text, args.chat) for text in args.prompts]

    on_token = None
    if not args.json and len(prompts) == 1:  # one prompt: stream its text as it is generated
        detokenizer = IncrementalDetokenizer(tokenizer)

        def on_token(row: int, token: int) -> None:
            sys.stdout.write(detokenizer.push(token))
            sys.stdout.flush()

    outputs = loaded.engine.generate(prompts, params, args.mode, on_token=on_token, refresh_every=args.refresh_every)

    for index, output in enumerate(outputs):
        text = tokenizer.decode(output.token_ids, skip_special_tokens=True)
        if args.json:
            print(json.dumps({
                "text": text, "token_ids": output.token_ids, "prompt_tokens": output.prompt_tokens,
                "finish_reason": output.finish_reason, "ttft_s": round(output.ttft_s, 6),
                "tpot_s": None if output.tpot_s is None else round(output.tpot_s, 6), "mode": args.mode,
            }, ensure_ascii=False))
        elif on_token is not None:
            print()
        else:
            print(f"[{index}] {text}")
    if not args.json:
        summary = outputs[0]
        tpot = "-" if summary.tpot_s is None else f"{summary.tpot_s * 1e3:.1f} ms"
        print(f"({args.mode}: {sum(len(o.token_ids) for o in outputs)} tokens, TTFT {summary.ttft_s * 1e3:.0f} ms, "
              f"TPOT {tpot})", file=sys.stderr)
    return 0

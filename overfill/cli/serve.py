"""`overfill serve` and `overfill client`: run the service locally, and call it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="run the service on a local Ray cluster (gRPC, port 9000)",
                                  description="Start Ray Serve with the prefill pool, the decode pool and the gRPC "
                                              "router. Ctrl-C (SIGINT) or SIGTERM stops everything it started.")
    serve.add_argument("--config", type=Path, help="deploy file: a Ray Serve config (deploy/*.yaml) or a bare ServiceConfig YAML (default: built-in defaults)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one config field, e.g. --set prefill.num_replicas=2 (repeatable)")
    serve.add_argument("--port", type=int, help="gRPC port (same as --set server.grpc_port=N)")
    serve.set_defaults(run=run_serve)

    client = subparsers.add_parser("client", help="call a running service and stream the answer")
    client.add_argument("prompt", metavar="PROMPT")
    client.add_argument("--address", default="127.0.0.1:9000")
    client.add_argument("--max-tokens", type=int, default=0, help="0 = the service default")
    client.add_argument("--temperature", type=float)
    client.add_argument("--top-p", type=float)
    client.add_argument("--top-k", type=int, help="sample among the K most likely tokens (0 = no cut)")
    client.add_argument("--seed", type=int)
    client.add_argument("--stop", action="append", default=[])
    client.add_argument("--logprobs", type=int, metavar="N",
                        help="report each token's log-probability and its N most likely alternatives (0-20; with "
                             "--json, in each message; else one line per token on stderr)")
    client.add_argument("--raw", action="store_true", help="send PROMPT as raw text (default: one chat user message)")
    client.add_argument("--json", action="store_true", help="print one JSON object per streamed message")
    client.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    client.add_argument("--api-key", default=os.environ.get("OVERFILL_API_KEY"),
                        help="API key, sent as `authorization: Bearer KEY` (default: $OVERFILL_API_KEY)")
    client.add_argument("--tls-ca", type=Path, metavar="FILE",
                        help="connect over TLS, trusting this CA certificate (PEM; a self-signed server's own)")
    client.set_defaults(run=run_client)


def run_serve(args: argparse.Namespace) -> int:
    from overfill.serving.config import load_config
    from services.app import read_serve_file, serve_forever

    from overfill.serving.auth import load_api_keys
    from services.tls_front import read_credentials

    overrides = list(args.overrides) + ([f"server.grpc_port={args.port}"] if args.port else [])
    config = load_config(args.config, overrides)
    # Missing keys or certificates fail here, before Ray starts (the router and the TLS front read them again).
    load_api_keys(config.auth)
    if config.server.tls_cert_file:
        read_credentials(config.server)
    serve_forever(config, read_serve_file(args.config))
    return 0


def run_client(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from overfill.client import OverFillClient, OverFillError

    source = {"prompt": args.prompt} if args.raw else {"messages": [{"role": "user", "content": args.prompt}]}
    with OverFillClient(args.address, timeout_s=args.timeout, api_key=args.api_key,
                        tls_root_cert=args.tls_ca) as client:
        try:
            for piece in client.generate(**source, max_tokens=args.max_tokens, temperature=args.temperature,
                                         top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop,
                                         logprobs=args.logprobs):
                if args.json:
                    print(json.dumps(MessageToDict(piece, preserving_proto_field_name=True)), flush=True)
                else:
                    sys.stdout.write(piece.text)
                    sys.stdout.flush()
                    for entry in piece.logprobs:
                        alternatives = ", ".join(f"{t.token!r} {t.logprob:.3f}" for t in entry.top_logprobs)
                        print(f"[{entry.token!r} {entry.logprob:.3f}" + (f" | {alternatives}]" if alternatives
                                                                          else "]"), file=sys.stderr)
                    if piece.finish_reason:
                        u = piece.usage
                        print(f"\n({piece.finish_reason}: {u.completion_tokens} tokens, TTFT {u.ttft_s * 1e3:.0f} ms, "
                              f"total {u.e2e_s * 1e3:.0f} ms, KV transfer {u.kv_transfer_s * 1e3:.1f} ms)",
                              file=sys.stderr)
        except OverFillError as e:
            print(f"overfill client: {e.code}: {e.message}", file=sys.stderr)
            return 1
    return 0

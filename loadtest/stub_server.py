"""A model-free `overfill.v1.Generation` server with set timings, for load-tool tests and client capacity checks.

Generate waits `ttft_s`, sends the first token, then a chunk of `tokens_per_chunk` tokens every `itl_s` until it
has sent max_tokens tokens (or `default_tokens` when the request leaves max_tokens at 0), and ends with "length"
and usage (prompt tokens = words in the prompt). Every `fail_every`-th request fails with RESOURCE_EXHAUSTED; with
`api_key` set, a request without `authorization: Bearer KEY` fails with UNAUTHENTICATED. Health answers SERVING with
the configured `replicas` map (empty by default, as a service that cannot report them).

    python -m loadtest.stub_server --port 0 --ttft-ms 50 --itl-ms 20    # prints "listening on PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from dataclasses import dataclass, field

import grpc

from overfill.v1 import generation_pb2 as pb
from overfill.v1 import generation_pb2_grpc as pb_grpc


@dataclass
class StubConfig:
    ttft_s: float = 0.05
    itl_s: float = 0.02
    tokens_per_chunk: int = 1
    default_tokens: int = 16
    fail_every: int = 0                    # 0 = never fail
    api_key: str | None = None
    replicas: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.ttft_s < 0 or self.itl_s < 0:
            raise ValueError(f"ttft_s and itl_s must be >= 0, got {self.ttft_s}, {self.itl_s}")
        if self.tokens_per_chunk < 1 or self.default_tokens < 1:
            raise ValueError("tokens_per_chunk and default_tokens must be >= 1")


class StubGeneration(pb_grpc.GenerationServicer):
    def __init__(self, config: StubConfig):
        self.config = config
        self.counter = itertools.count(1)
        self.num_requests = 0

    async def _check_key(self, context) -> None:
        if self.config.api_key is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {self.config.api_key}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")

    async def Generate(self, request: pb.GenerateRequest, context):
        await self._check_key(context)
        number = next(self.counter)
        self.num_requests += 1
        config = self.config
        if config.fail_every and number % config.fail_every == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"stub: request {number} refused on purpose")
        text = request.prompt if request.WhichOneof("input") == "prompt" else \
            " ".join(m.content for m in request.chat.messages)
        total = request.max_tokens or config.default_tokens
        rid = request.request_id or f"stub-{number}"
        await asyncio.sleep(config.ttft_s)
        sent = 0
        while sent < total:
            if sent:
                await asyncio.sleep(config.itl_s)
            n = 1 if sent == 0 else min(config.tokens_per_chunk, total - sent)
            sent += n
            response = pb.GenerateResponse(text=" tok" * n, token_ids=[7] * n, request_id=rid)
            if sent == total:
                response.finish_reason = "length"
                response.usage.CopyFrom(pb.Usage(prompt_tokens=len(text.split()), completion_tokens=total))
            yield response

    async def Health(self, request, context):
        await self._check_key(context)
        return pb.HealthResponse(status="SERVING", replicas=self.config.replicas)

    async def GetModelInfo(self, request, context):
        await self._check_key(context)
        return pb.ModelInfoResponse(full_model="stub", decoder="stub", max_tokens_limit=4096)


async def start_stub(config: StubConfig, port: int = 0, host: str = "127.0.0.1",
                     tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.aio.Server, int, StubGeneration]:
    """Start in the running event loop; `tls` = (private key PEM, certificate chain PEM). Returns (server, the port
    bound, the servicer)."""
    server = grpc.aio.server()
    servicer = StubGeneration(config)
    pb_grpc.add_GenerationServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    await server.start()
    return server, bound, servicer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--default-tokens", type=int, default=16)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args(argv)
    config = StubConfig(args.ttft_ms / 1000, args.itl_ms / 1000, args.tokens_per_chunk, args.default_tokens,
                        args.fail_every)

    async def serve() -> None:
        server, port, _ = await start_stub(config, args.port, args.host)
        print(f"listening on {port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

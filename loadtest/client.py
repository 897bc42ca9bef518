"""Where the load generator connects (`Connection`, either API), and its gRPC side: one channel (TLS and API key
optional), the ready check, one timed streamed request, and the replicas per pool from Health. The HTTP side, with
the same methods, is loadtest/openai_client.py."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from loadtest.datasets import SampleRequest
from loadtest.records import OK, RequestRecord
from overfill.client import make_request
from overfill.v1 import generation_pb2 as pb
from overfill.v1 import generation_pb2_grpc as pb_grpc

API_KEY_ENV = "OVERFILL_API_KEY"
BACKENDS = ("grpc", "openai")  # overfill.v1.Generation, or the OpenAI-compatible HTTP API (streamed completions)
# One channel carries every stream; lift the message size caps that a long prompt could hit.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


@dataclass(frozen=True)
class Connection:
    """Where and how to connect: `target` HOST:PORT (the gRPC port, or with backend "openai" the HTTP API's, served
    under /v1); `api_key` is sent as `authorization: Bearer KEY` (gRPC metadata or the HTTP header); `tls_ca` (a PEM
    file) switches to TLS with that root certificate; `tls_server_name` overrides the name the certificate is checked
    against (e.g. a certificate for "localhost" reached as 127.0.0.1)."""
    target: str
    api_key: str | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    backend: str = "grpc"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        host, sep, port = self.target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--target must be HOST:PORT, got {self.target!r}")
        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise ValueError(f"--tls-ca {self.tls_ca}: no such file")
        if self.tls_server_name is not None and self.tls_ca is None:
            raise ValueError("--tls-server-name needs --tls-ca")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def open(self) -> grpc.aio.Channel:
        """An asyncio channel; call inside the event loop that uses it."""
        if self.tls_ca is None:
            return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(self.tls_ca).read_bytes())
        options = CHANNEL_OPTIONS
        if self.tls_server_name:
            options += (("grpc.ssl_target_name_override", self.tls_server_name),)
        return grpc.aio.secure_channel(self.target, credentials, options=options)


@dataclass(frozen=True)
class ServiceInfo:
    full_model: str | None       # what GetModelInfo names (a directory or an alias); None if it did not answer
    max_tokens_limit: int | None
    served_model: str | None = None  # the HTTP API's model id (what requests name in `model`)


def open_target(connection: Connection):
    """The client of `connection`'s API: a GrpcTarget or an OpenAITarget (same methods). Use `async with`."""
    if connection.backend == "openai":
        from loadtest.openai_client import OpenAITarget

        return OpenAITarget(connection)
    return GrpcTarget(connection)


def default_api_key() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


def to_request(sample: SampleRequest, request_id: str, temperature: float | None) -> pb.GenerateRequest:
    return make_request(prompt=sample.prompt, messages=list(sample.messages) if sample.messages else None,
                        max_tokens=sample.max_tokens, temperature=temperature, request_id=request_id)


class Progress:
    """Live counters shared by the requests and the per-second sampler (one event loop: no locks needed)."""

    def __init__(self):
        self.in_flight = self.sent = self.completed = self.failed = self.output_tokens = 0

    def on_send(self) -> None:
        self.in_flight += 1
        self.sent += 1

    def on_tokens(self, n: int) -> None:
        self.output_tokens += n

    def on_done(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        if record.success:
            self.completed += 1
        else:
            self.failed += 1


class GrpcTarget:
    """The gRPC API through one channel: `async with GrpcTarget(connection) as target`."""

    def __init__(self, connection: Connection):
        self.connection = connection

    async def __aenter__(self) -> GrpcTarget:
        self.channel = self.connection.open()
        self.stub = pb_grpc.GenerationStub(self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Connect now (before a benchmark's clock starts: setting up the connection is not the service's latency)."""
        await asyncio.wait_for(self.channel.channel_ready(), timeout=timeout_s)

    async def probe(self, ready_timeout_s: float) -> ServiceInfo:
        """Wait until Health says SERVING (UNIMPLEMENTED counts as ready), then ask GetModelInfo (optional)."""
        connection, metadata = self.connection, self.connection.metadata
        deadline = time.monotonic() + ready_timeout_s
        last = "no answer"
        while True:
            try:
                status = (await self.stub.Health(pb.HealthRequest(), metadata=metadata, timeout=5)).status
                if status == "SERVING":
                    break
                last = f"Health says {status}"
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    break
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise ValueError(f"--target {connection.target}: {e.code().name}: {e.details()} "
                                     "(check --api-key / $OVERFILL_API_KEY)") from e
                last = f"{e.code().name}: {e.details()}"
            if time.monotonic() > deadline:
                raise ValueError(f"--target {connection.target} is not ready after {ready_timeout_s:.0f} s ({last})")
            await asyncio.sleep(0.5)
        try:
            info = await self.stub.GetModelInfo(pb.ModelInfoRequest(), metadata=metadata, timeout=10)
            return ServiceInfo(info.full_model or None, info.max_tokens_limit or None)
        except grpc.aio.AioRpcError:
            return ServiceInfo(None, None)

    async def send(self, sample: SampleRequest, record: RequestRecord, origin: float, timeout_s: float | None,
                   temperature: float | None, progress: Progress, prompt_tokens: dict[int, int]) -> RequestRecord:
        request = to_request(sample, record.request_id, temperature)
        return await send_one(self.stub, request, record, origin, self.connection.metadata, timeout_s, progress,
                              prompt_tokens)

    async def replicas(self, timeout_s: float) -> dict[str, int] | None:
        """Running replicas per pool from Health's `replicas` map; None if it is missing, empty or Health failed."""
        try:
            response = await self.stub.Health(pb.HealthRequest(), metadata=self.connection.metadata,
                                              timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return None
        replicas = dict(getattr(response, "replicas", {}) or {})
        return {name: int(n) for name, n in sorted(replicas.items())} or None


async def send_one(stub, request: pb.GenerateRequest, record: RequestRecord, origin: float,
                   metadata: tuple, timeout_s: float | None, progress: Progress,
                   prompt_tokens: dict[int, int]) -> RequestRecord:
    """Stream one Generate call, filling `record` (times relative to `origin`, a perf_counter reading). Failures
    become the record's status; the service's prompt token count goes to `prompt_tokens[record.index]`."""
    clock = time.perf_counter
    record.send_s = clock() - origin
    progress.on_send()
    try:
        call = stub.Generate(request, metadata=metadata, timeout=timeout_s)
        async for response in call:
            if response.token_ids:
                record.chunk_times_s.append(clock() - origin)
                record.chunk_tokens.append(len(response.token_ids))
                progress.on_tokens(len(response.token_ids))
            if response.HasField("usage"):
                prompt_tokens[record.index] = response.usage.prompt_tokens
        if not record.chunk_times_s:
            record.status, record.error = "UNKNOWN", "the stream ended without any token"
    except grpc.aio.AioRpcError as e:
        record.status, record.error = e.code().name, e.details() or ""
    except asyncio.CancelledError:  # the benchmark itself was stopped
        record.status = "CANCELLED"
        raise
    finally:
        if record.status != OK and not record.error:
            record.error = record.status
        progress.on_done(record)
    return record

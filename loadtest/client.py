"""The gRPC side of the load generator: one channel (TLS and API key optional) and one timed, streamed request."""

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

API_KEY_ENV = "OVERFILL_API_KEY"
# One channel carries every stream; lift the message size caps that a long prompt could hit.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


@dataclass(frozen=True)
class Connection:
    """Where and how to connect: `target` HOST:PORT; `api_key` is sent as `authorization: Bearer KEY` metadata;
    `tls_ca` (a PEM file) switches to TLS with that root certificate; `tls_server_name` overrides the name the
    certificate is checked against (e.g. a certificate for "localhost" reached as 127.0.0.1)."""
    target: str
    api_key: str | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None

    def __post_init__(self):
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

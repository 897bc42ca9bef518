"""Python client for the OverFill Serve gRPC API (`overfill.v1.Generation`), sync and asyncio, streaming.

    with OverFillClient("127.0.0.1:9000") as client:
        for piece in client.generate("What is the capital of France?", max_tokens=32):
            print(piece.text, end="", flush=True)

Errors arrive as `OverFillError` with the gRPC status name (`code`), the service's message (which names the
field at fault for INVALID_ARGUMENT) and the `request_id`. Every Generate call carries one (the caller's, else a
fresh one made here), so even an error the client raises itself, such as its own deadline, says which request it
was, and the service's logs and metrics can be searched for it.

A service with API keys wants `api_key=` (sent as `authorization: Bearer <key>` metadata); one behind TLS wants
`tls_root_cert=` (the CA certificate that signed the server's, as a PEM file path or bytes; for a self-signed
certificate, the certificate itself).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc

from overfill.status import StatusCode
from overfill.v1 import generation_pb2 as pb
from overfill.v1 import generation_pb2_grpc as pb_grpc


class OverFillError(RuntimeError):
    """`code` is the call's StatusCode (it compares equal to the status name, e.g. "UNAVAILABLE")."""

    def __init__(self, code: StatusCode | str, message: str, request_id: str = ""):
        code = StatusCode(code)
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id

    @classmethod
    def of(cls, error: grpc.RpcError, request_id: str = "") -> OverFillError:
        """The service's status and message; one that does not name `request_id` (e.g. the client's own deadline)
        gets it appended."""
        message = error.details() or ""
        if request_id and request_id not in message:
            message = f"{message} (request {request_id!r})" if message else f"request {request_id!r}"
        return cls(StatusCode.of_grpc(error.code()), message, request_id)


def with_request_id(kwargs: dict) -> dict:
    """`make_request` arguments with a request id: the caller's, else a fresh one."""
    return {**kwargs, "request_id": kwargs.get("request_id") or uuid.uuid4().hex}


def make_request(prompt: str | None = None, messages: list[dict] | None = None, max_tokens: int = 0,
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 seed: int | None = None, stop: list[str] = (), request_id: str = "",
                 prompt_token_ids: list[int] | None = None, stop_token_ids: list[int] = (),
                 ignore_eos: bool = False, logprobs: int | None = None) -> pb.GenerateRequest:
    """Exactly one of `prompt` (raw text), `messages` (chat, [{"role", "content"}, ...]) or `prompt_token_ids`.
    `logprobs`: each token's log-probability and those of the `logprobs` most likely tokens (0 to 20)."""
    request = pb.GenerateRequest(max_tokens=max_tokens, stop=list(stop), request_id=request_id,
                                 stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos)
    if prompt is not None:
        request.prompt = prompt
    if messages is not None:
        request.chat.CopyFrom(pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in messages]))
    if prompt_token_ids is not None:
        request.prompt_token_ids.CopyFrom(pb.TokenIds(ids=list(prompt_token_ids)))
    if temperature is not None:
        request.temperature = temperature
    if top_p is not None:
        request.top_p = top_p
    if top_k is not None:
        request.top_k = top_k
    if seed is not None:
        request.seed = seed
    if logprobs is not None:
        request.logprobs = logprobs
    return request


def call_metadata(metadata: tuple[tuple[str, str], ...] = (), api_key: str | None = None) -> tuple:
    """`metadata` plus the API key as `authorization: Bearer <key>`."""
    return tuple(metadata) + ((("authorization", f"Bearer {api_key}"),) if api_key else ())


def tls_credentials(tls_root_cert: str | Path | bytes | None) -> grpc.ChannelCredentials | None:
    """Channel credentials trusting `tls_root_cert` (PEM bytes or a file path); None: a plaintext channel."""
    if tls_root_cert is None:
        return None
    pem = tls_root_cert if isinstance(tls_root_cert, bytes) else Path(tls_root_cert).expanduser().read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


class OverFillClient:
    def __init__(self, address: str = "127.0.0.1:9000", timeout_s: float | None = None,
                 metadata: tuple[tuple[str, str], ...] = (), api_key: str | None = None,
                 tls_root_cert: str | Path | bytes | None = None):
        credentials = tls_credentials(tls_root_cert)
        self.channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.timeout_s, self.metadata = timeout_s, call_metadata(metadata, api_key)

    def generate(self, prompt: str | None = None, **kwargs) -> Iterator[pb.GenerateResponse]:
        """Stream responses; the last has finish_reason and usage. Closing the iterator cancels the request."""
        request = make_request(prompt, **with_request_id(kwargs))
        call = self.stub.Generate(request, timeout=self.timeout_s, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise OverFillError.of(e, request.request_id) from e
        finally:
            call.cancel()

    def generate_unary(self, prompt: str | None = None, **kwargs) -> pb.GenerateUnaryResponse:
        request = make_request(prompt, **with_request_id(kwargs))
        try:
            return self.stub.GenerateUnary(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as e:
            raise OverFillError.of(e, request.request_id) from e

    def health(self) -> str:
        return self.health_report().status

    def health_report(self) -> pb.HealthResponse:
        """Status and running replicas per deployment (router, prefill, decode)."""
        try:
            return self.stub.Health(pb.HealthRequest(), timeout=10, metadata=self.metadata)
        except grpc.RpcError as e:
            raise OverFillError.of(e) from e

    def model_info(self) -> pb.ModelInfoResponse:
        try:
            return self.stub.GetModelInfo(pb.ModelInfoRequest(), timeout=10, metadata=self.metadata)
        except grpc.RpcError as e:
            raise OverFillError.of(e) from e

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> OverFillClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncOverFillClient:
    def __init__(self, address: str = "127.0.0.1:9000", timeout_s: float | None = None,
                 metadata: tuple[tuple[str, str], ...] = (), api_key: str | None = None,
                 tls_root_cert: str | Path | bytes | None = None):
        credentials = tls_credentials(tls_root_cert)
        self.channel = (grpc.aio.secure_channel(address, credentials) if credentials
                        else grpc.aio.insecure_channel(address))
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.timeout_s, self.metadata = timeout_s, call_metadata(metadata, api_key)

    async def generate(self, prompt: str | None = None, **kwargs) -> AsyncIterator[pb.GenerateResponse]:
        request = make_request(prompt, **with_request_id(kwargs))
        call = self.stub.Generate(request, timeout=self.timeout_s, metadata=self.metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as e:
            raise OverFillError.of(e, request.request_id) from e
        finally:
            call.cancel()

    async def generate_unary(self, prompt: str | None = None, **kwargs) -> pb.GenerateUnaryResponse:
        request = make_request(prompt, **with_request_id(kwargs))
        try:
            return await self.stub.GenerateUnary(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as e:
            raise OverFillError.of(e, request.request_id) from e

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncOverFillClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

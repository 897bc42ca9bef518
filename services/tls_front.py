"""TLS for the public gRPC API: a small pass-through server in front of Ray Serve's gRPC proxy.

Ray Serve 2.60's gRPC proxy only binds an insecure port (`[::]:grpc_options.port`, see
ray/serve/_private/default_impl.py `add_grpc_address`); it has no TLS option. When `server.tls_cert_file` and
`server.tls_key_file` are set, `start_service` (so `overfill serve`) also starts this front in its own process:

    client --TLS--> front [::]:server.tls_port --plaintext, loopback--> Serve gRPC proxy :server.grpc_port --> router

The front forwards every method of the public services (overfill.v1.Generation and grpc.health.v1.Health)
unchanged: request and response bytes (never parsed), the request
metadata (the API key included: the router checks it), the deadline, cancellation (a client that goes away cancels
the upstream call, which cancels the request in the router), and the status, details and trailing metadata that
come back. Health (`Health`, grpc.health.v1 `Check`) it answers from a cache of its own, asking upstream at most once
a second per answer (services/front_health.py: a keyless health flood then costs this process, not Ray Serve's request
path). Server reflection, which streams both ways, it answers itself from the same .proto descriptors. Anything
else, Ray Serve's own RayServeAPIService included (`ListApplications` names every application of the cluster, and
needs no key), is UNIMPLEMENTED at the front. It holds no state of its own. With TLS on, only `tls_port` is public: `grpc_port` must not be reachable from
outside the host (firewall it; the Serve proxy binds all interfaces).

Where the service is deployed by `serve run` or KubeRay instead, this process does not exist: terminate TLS at the
ingress or load balancer in front of the Serve proxy there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from overfill.serving.config import ConfigError, ServerConfig
from overfill.v1 import generation_pb2
from services.front_health import (GENERATION_HEALTH, HEALTH_CHECK, MAX_AGE_S, UPSTREAM_TIMEOUT_S, HealthCache, Outcome,
                                   answer_key)
from services.router.grpc_handlers import MAX_REQUEST_BYTES  # the public edge reads no more than the proxy does

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 << 20
STOP_GRACE_S = 5.0
# Headers gRPC sets itself on each hop; forwarding them would duplicate or contradict the new call's own.
HOP_HEADERS = ("user-agent", "te", "content-type", "host")


def forwarded_methods() -> dict[str, bool]:
    """'/package.Service/Method' -> whether the server streams, for each method the front forwards. Client
    streaming methods are not forwarded (none exist in the API; reflection, which streams both ways, is answered by
    the front itself)."""
    methods = {}
    for service in (generation_pb2.DESCRIPTOR.services_by_name["Generation"],
                    health_pb2.DESCRIPTOR.services_by_name["Health"]):
        for method in service.methods:
            if not method.client_streaming:
                methods[f"/{service.full_name}/{method.name}"] = method.server_streaming
    return methods


def read_credentials(server: ServerConfig) -> grpc.ServerCredentials:
    """The server's certificate chain and key (PEM) as gRPC credentials; errors name the field."""
    pem = {}
    for name in ("tls_cert_file", "tls_key_file"):
        path = Path(getattr(server, name)).expanduser()
        try:
            pem[name] = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"server.{name} = {str(path)!r} cannot be read: {e.strerror or e}") from e
        if b"-----BEGIN" not in pem[name]:
            raise ConfigError(f"server.{name} = {str(path)!r} is not a PEM file")
    return grpc.ssl_server_credentials([(pem["tls_key_file"], pem["tls_cert_file"])])


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in context.invocation_metadata() or ()
                 if not key.startswith((":", "grpc-")) and key not in HOP_HEADERS)


class _PassThrough(grpc.GenericRpcHandler):
    """Answers every known method with a handler that replays the call on the upstream channel, as bytes."""

    def __init__(self, channel: grpc.aio.Channel, methods: dict[str, bool], health: HealthCache | None = None):
        self.methods, self.health = methods, health or HealthCache()
        self.calls = {name: (channel.unary_stream(name) if streaming else channel.unary_unary(name))
                      for name, streaming in methods.items()}  # no (de)serializers: bytes in, bytes out

    def service(self, handler_call_details):
        name = handler_call_details.method
        if name not in self.methods:
            return None  # UNIMPLEMENTED
        if name in (GENERATION_HEALTH, HEALTH_CHECK):
            return grpc.unary_unary_rpc_method_handler(self._health(name, self.calls[name], self.health))
        if self.methods[name]:
            return grpc.unary_stream_rpc_method_handler(self._stream(self.calls[name]))
        return grpc.unary_unary_rpc_method_handler(self._unary(self.calls[name]))

    @staticmethod
    def _unary(upstream):
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = upstream(request, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
            try:
                response = await call
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()))
            finally:
                call.cancel()  # no-op once done; cancels upstream when this handler is cancelled
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            return response
        return forward

    @staticmethod
    def _health(method: str, upstream, cache: HealthCache):
        forward = _PassThrough._unary(upstream)

        async def ask(request: bytes) -> Outcome:
            try:
                return Outcome(await upstream(request, timeout=UPSTREAM_TIMEOUT_S))
            except grpc.aio.AioRpcError as e:
                return Outcome(None, e.code(), e.details() or "")

        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            key = answer_key(method, request)
            if key is None:  # not one of the cached answers: forwarded as any call
                return await forward(request, context)
            if isinstance(key, Outcome):  # answered by the front itself (an unknown service name)
                outcome = key
            else:
                try:
                    outcome = await cache.answer(key, lambda: ask(request), context.time_remaining())
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no health answer within the deadline")
            if outcome.response is None:
                await context.abort(outcome.code, outcome.details)
            return outcome.response
        return answer

    @staticmethod
    def _stream(upstream):
        async def forward(request: bytes, context: grpc.aio.ServicerContext):
            call = upstream(request, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()))
            finally:
                call.cancel()
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
        return forward


class TLSFront:
    """The front's grpc.aio server and upstream channel, on an event loop in a daemon thread of this process."""

    def __init__(self, credentials: grpc.ServerCredentials, port: int, upstream: str, host: str = "[::]",
                 health_max_age_s: float = MAX_AGE_S):
        self.credentials, self.port, self.upstream, self.host = credentials, port, upstream, host
        self.health = HealthCache(health_max_age_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="overfill-tls-front", daemon=True)

    def start(self, timeout_s: float = 30.0) -> TLSFront:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the TLS front did not start within {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        log.info("TLS front on %s:%d -> %s", self.host, self.port, self.upstream)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(STOP_GRACE_S + 5)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001  reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        channel = grpc.aio.insecure_channel(self.upstream, options=[
            ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)])
        server = grpc.aio.server(handlers=[_PassThrough(channel, forwarded_methods(), self.health)], options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES)])
        # Reflection from the front's own descriptors (the same .proto files the proxy's reflection answers from):
        # grpcurl and Postman discover the API on the TLS port too.
        reflection.enable_server_reflection([generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name,
                                             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                             reflection.SERVICE_NAME], server)
        try:
            if server.add_secure_port(f"{self.host}:{self.port}", self.credentials) == 0:
                raise OSError(f"the TLS front could not bind {self.host}:{self.port} (server.tls_port)")
            await server.start()
            self._ready.set()
            await self._stopping.wait()
            await server.stop(STOP_GRACE_S)
        finally:
            await channel.close()


_running: TLSFront | None = None


def start(server: ServerConfig) -> TLSFront | None:
    """Start the front for `server` if it has a certificate (`start_service` calls this); None when TLS is off."""
    global _running
    if not server.tls_cert_file:
        return None
    stop()
    _running = TLSFront(read_credentials(server), server.tls_port, f"127.0.0.1:{server.grpc_port}").start()
    return _running


def stop() -> None:
    """Stop the front `start` started, if any (`stop_service` calls this)."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None

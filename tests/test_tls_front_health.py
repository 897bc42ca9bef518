"""The TLS front answers health from its own cache (services/front_health.py): a keyless flood of `Health` and
grpc.health.v1 `Check` calls reaches the upstream (Ray Serve's proxy, here a fake that counts) once per answer per
max age, unknown service names never reach it, bytes that do not parse are forwarded, an upstream failure is an
answer too, and a caller's deadline holds. No Ray: the front in its thread, the upstream on the test's event loop."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from overfill.serving.config import ServerConfig
from overfill.v1 import generation_pb2 as pb
from overfill.v1 import generation_pb2_grpc as pb_grpc
from services.tls_front import TLSFront, read_credentials
from tests.service_helpers import free_port
from tests.test_kv_mtls import write_ca_and_certificate


class FakeProxy:
    """The upstream: Health and Check as Ray Serve's proxy would answer them, counted, after `delay_s`."""

    def __init__(self):
        self.calls: list[str] = []
        self.status, self.code, self.delay_s = "SERVING", grpc.StatusCode.OK, 0.02

    def handlers(self):
        async def health(request: bytes, context) -> bytes:
            return await self._answer("Health", context, pb.HealthResponse(status=self.status, replicas={"decode": 1}))

        async def check(request: bytes, context) -> bytes:
            return await self._answer("Check", context, health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.SERVING))

        return [grpc.method_handlers_generic_handler("overfill.v1.Generation", {
                    "Health": grpc.unary_unary_rpc_method_handler(health)}),
                grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                    "Check": grpc.unary_unary_rpc_method_handler(check)})]

    async def _answer(self, name: str, context, response) -> bytes:
        self.calls.append(name)
        await asyncio.sleep(self.delay_s)
        if self.code != grpc.StatusCode.OK:
            await context.abort(self.code, "no healthy replica")
        return response.SerializeToString()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return write_ca_and_certificate(tmp_path_factory.mktemp("front-health"), "front", ["localhost"], ["127.0.0.1"])


def run_against_front(certificate, max_age_s: float, body):
    """Start the fake proxy and a front before it, run `body(proxy, front address, channel credentials)`."""
    async def main():
        proxy = FakeProxy()
        upstream = grpc.aio.server(handlers=proxy.handlers())
        upstream_port = upstream.add_insecure_port("127.0.0.1:0")
        await upstream.start()
        credentials = read_credentials(ServerConfig(tls_cert_file=str(certificate.cert),
                                                    tls_key_file=str(certificate.key)))
        front = TLSFront(credentials, free_port(), f"127.0.0.1:{upstream_port}", host="127.0.0.1",
                         health_max_age_s=max_age_s)
        await asyncio.to_thread(front.start)
        try:
            async with grpc.aio.secure_channel(f"127.0.0.1:{front.port}", grpc.ssl_channel_credentials(
                    certificate.ca.read_bytes())) as channel:
                return await body(proxy, channel, front)
        finally:
            await asyncio.to_thread(front.stop)
            await upstream.stop(None)
    return asyncio.run(main())


async def flood(call, num_calls: int, concurrency: int = 64) -> list:
    left, results = iter(range(num_calls)), []

    async def worker():
        for _ in left:
            try:
                results.append(await call())
            except grpc.aio.AioRpcError as e:
                results.append(e.code())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def test_a_keyless_health_flood_reaches_the_proxy_once_per_answer(certificate):
    async def body(proxy, channel, front):
        health = pb_grpc.GenerationStub(channel).Health
        check = health_pb2_grpc.HealthStub(channel).Check
        replies = await flood(lambda: health(pb.HealthRequest(), timeout=10), 600)
        checks = await flood(lambda: check(health_pb2.HealthCheckRequest(service="overfill.v1.Generation"),
                                           timeout=10), 300)
        checks += await flood(lambda: check(health_pb2.HealthCheckRequest(service=""), timeout=10), 300)
        return proxy.calls, replies, checks

    calls, replies, checks = run_against_front(certificate, 60.0, body)
    assert {(r.status, tuple(r.replicas.items())) for r in replies} == {("SERVING", (("decode", 1),))}  # its answer
    assert {c.status for c in checks} == {health_pb2.HealthCheckResponse.SERVING}
    assert calls == ["Health", "Check", "Check"]  # one upstream call per answer (two Check names), not 1200


def test_unknown_names_are_refused_at_the_front_and_unparsable_bytes_forwarded(certificate):
    async def body(proxy, channel, front):
        check = health_pb2_grpc.HealthStub(channel).Check
        codes = await flood(lambda: check(health_pb2.HealthCheckRequest(service=f"made-up-{time.monotonic()}"),
                                          timeout=10), 200)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await check(health_pb2.HealthCheckRequest(service="x" * 500), timeout=10)
        raw = channel.unary_unary("/overfill.v1.Generation/Health")  # bytes in, bytes out
        await raw(b"\x0a", timeout=10)  # a truncated field: not a HealthRequest
        return proxy.calls, codes, error.value

    calls, codes, error = run_against_front(certificate, 60.0, body)
    assert set(codes) == {grpc.StatusCode.NOT_FOUND}
    assert error.code() == grpc.StatusCode.NOT_FOUND and "health is reported for '' and" in error.details()
    assert len(error.details()) < 200  # the name is echoed cut short, as the router does
    assert calls == ["Health"]  # only the unparsable request went upstream (the router refuses it there)


def test_the_answer_follows_the_proxy_within_the_max_age_and_failures_are_answers_too(certificate):
    async def body(proxy, channel, front):
        health = pb_grpc.GenerationStub(channel).Health
        seen = [(await health(pb.HealthRequest(), timeout=10)).status]
        proxy.status = "NOT_SERVING"
        seen.append((await health(pb.HealthRequest(), timeout=10)).status)  # still the kept answer
        await asyncio.sleep(0.35)
        seen.append((await health(pb.HealthRequest(), timeout=10)).status)
        proxy.code = grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.35)
        codes = await flood(lambda: health(pb.HealthRequest(), timeout=10), 200)
        return proxy.calls, seen, codes

    calls, seen, codes = run_against_front(certificate, 0.3, body)
    assert seen == ["SERVING", "SERVING", "NOT_SERVING"]
    assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
    assert 3 <= len(calls) <= 4  # the flood of 200 failing calls asked once (twice if it outlived 0.3 s)


def test_a_health_call_keeps_its_deadline_while_the_proxy_is_slow(certificate):
    async def body(proxy, channel, front):
        proxy.delay_s = 3.0
        health = pb_grpc.GenerationStub(channel).Health
        start = time.monotonic()
        codes = await flood(lambda: health(pb.HealthRequest(), timeout=0.5), 20, concurrency=20)
        return proxy.calls, codes, time.monotonic() - start

    calls, codes, seconds = run_against_front(certificate, 60.0, body)
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED} and seconds < 2.5
    assert calls == ["Health"]  # the callers that left did not ask again

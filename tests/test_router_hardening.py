"""The router without Ray, against what a hostile client or a sick neighbour does: a flood of keyless health calls
reaches each pool once per probe period, a controller or pool that never answers holds up no health call beyond its
timeout, and a prefill that finishes as its caller leaves (or that takes too long) leaves no lease behind."""

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from grpc_health.v1 import health_pb2

from overfill.v1 import generation_pb2 as pb
from services.router.pool_health import PoolHealth, PoolStatus
from tests.test_security import _Context, assert_no_kv_left_and_close, in_process_router


@pytest.fixture(scope="module")
def tiny_models(service_models):
    return service_models


async def wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return condition()


class CountedPool:
    """A pool's handle that counts the calls reaching it, by method."""

    def __init__(self, handle):
        self.handle, self.calls = handle, {}

    def __getattr__(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.handle, name)


# ---- health: a cache in front of the pools --------------------------------------------------------------------------

def test_a_flood_of_keyless_health_calls_reaches_each_pool_once(tiny_models, monkeypatch):
    """500 Health, 500 grpc.health.v1 Check and 500 HTTP-style `serving()` calls at once: one probe, so one
    `stats()` per pool, and every call answers SERVING."""
    router, prefill, decode = in_process_router(tiny_models, monkeypatch)
    router.prefill, router.decode = CountedPool(router.prefill), CountedPool(router.decode)

    async def flood():
        health = [router.Health(pb.HealthRequest(), _Context()) for _ in range(500)]
        checks = [router.Check(health_pb2.HealthCheckRequest(service=""), _Context()) for _ in range(500)]
        served = [router.serving() for _ in range(500)]
        return await asyncio.gather(*health, *checks, *served)

    answers = asyncio.run(flood())
    assert [a.status for a in answers[:500]] == ["SERVING"] * 500
    assert [a.status for a in answers[500:1000]] == [health_pb2.HealthCheckResponse.SERVING] * 500
    assert [a[0] for a in answers[1000:]] == [True] * 500
    assert router.prefill.calls == {"stats": 1} and router.decode.calls == {"stats": 1}
    assert router.pool_health.num_probes == 1
    assert_no_kv_left_and_close(prefill, decode)


def test_health_probes_the_pools_again_only_after_max_age():
    statuses = iter([PoolStatus(True, {"prefill": 1, "decode": 1}), PoolStatus(False, {"prefill": 1, "decode": 0})])
    calls = []

    async def probe():
        calls.append(time.monotonic())
        return next(statuses)

    async def run():
        health = PoolHealth(probe, max_age_s=0.2, timeout_s=1.0)
        first = await asyncio.gather(*(health.get() for _ in range(100)))
        again = await health.get()
        await asyncio.sleep(0.2)  # the answer is now max_age_s old: the next call probes again
        later = await asyncio.gather(*(health.get() for _ in range(100)))
        return first, again, later

    first, again, later = asyncio.run(run())
    assert {s.serving for s in first} == {True} and again.serving and {s.serving for s in later} == {False}
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.2


def test_a_pool_that_never_answers_is_not_serving_within_the_timeout_and_probed_once_at_a_time():
    """A probe that hangs (a pool whose queue never moves): every caller gets NOT_SERVING, with the replica counts
    last known, once the timeout passes, and the callers meanwhile share that one probe."""
    pools_back = asyncio.Event()
    calls = []

    async def probe():
        calls.append(1)
        if len(calls) == 1:
            return PoolStatus(True, {"prefill": 1, "decode": 1})
        await pools_back.wait()

    async def run():
        health = PoolHealth(probe, max_age_s=0.0, timeout_s=0.2)
        assert (await health.get()).serving
        started = time.monotonic()
        answers = await asyncio.gather(*(health.get() for _ in range(200)))
        return answers, time.monotonic() - started

    answers, waited_s = asyncio.run(run())
    assert all(a == PoolStatus(False, {"prefill": 1, "decode": 1}) for a in answers)
    assert len(calls) == 2 and 0.2 <= waited_s < 1.0


def test_a_stalled_serve_status_holds_up_health_no_longer_than_its_timeout(monkeypatch):
    """serve.status() that never returns (a controller gone quiet): each get answers the last known counts within
    the timeout, and no second call is queued behind the stalled one; once the controller answers, its counts."""
    import ray.serve

    import services.router.replica_counts as replica_counts

    controller_back, calls = threading.Event(), []

    def running_replicas(app_name):
        calls.append(app_name)
        if len(calls) == 2:
            controller_back.wait(10.0)
        return {"prefill": len(calls), "decode": 1}

    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: SimpleNamespace(app_name="overfill"))
    monkeypatch.setattr(replica_counts, "running_replicas", running_replicas)
    counts = replica_counts.ReplicaCounts(timeout_s=0.2)

    async def run():
        assert await counts.get() == {"prefill": 1, "decode": 1}
        waits = []
        for _ in range(3):  # the second call stalls: the last counts, each within the timeout
            started = time.monotonic()
            assert await asyncio.wait_for(counts.get(), 2.0) == {"prefill": 1, "decode": 1}
            waits.append(time.monotonic() - started)
        assert len(calls) == 2 and max(waits) < 1.0
        controller_back.set()
        assert await wait_until(lambda: counts._call.done())
        return await counts.get()

    try:
        assert asyncio.run(run()) == {"prefill": 3, "decode": 1}
    finally:
        controller_back.set()
        counts.close()


def test_replica_counts_younger_than_their_max_age_are_answered_without_asking(monkeypatch):
    import ray.serve

    import services.router.replica_counts as replica_counts

    calls = []
    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: SimpleNamespace(app_name="overfill"))
    monkeypatch.setattr(replica_counts, "running_replicas", lambda app: calls.append(app) or {"decode": len(calls)})
    counts = replica_counts.ReplicaCounts(timeout_s=1.0, max_age_s=0.3)

    async def run():
        answers = [await counts.get() for _ in range(5)]
        await asyncio.sleep(0.35)
        return answers + [await counts.get()]

    try:
        assert asyncio.run(run()) == [{"decode": 1}] * 5 + [{"decode": 2}] and len(calls) == 2
    finally:
        counts.close()


# ---- the prefill call: a timeout, and no lease left by a caller that leaves ----------------------------------------

class HeldPrefill:
    """The prefill pool's handle, whose answers are held back: the real prefill runs at once (its KV is leased) and
    its ticket reaches the router only once `let_go` is set, as when a ticket is on its way back as the caller
    leaves. `cancel()` is recorded and comes too late to stop anything."""

    def __init__(self, server):
        self.server, self.let_go, self.cancelled = server, asyncio.Event(), []
        self.prefill = self

    def remote(self, request):
        held = self

        async def answer():
            result = await held.server.prefill(request)
            await held.let_go.wait()
            return result

        answering = asyncio.ensure_future(answer())

        class Call:
            def __await__(self):
                return asyncio.shield(answering).__await__()

            def cancel(self):
                held.cancelled.append(request.request_id)

        return Call()


def test_a_cancel_after_prefill_finished_releases_the_lease_at_once(tiny_models, monkeypatch):
    router, prefill, decode = in_process_router(tiny_models, monkeypatch)
    held = router.prefill = HeldPrefill(prefill)

    async def run():
        async def generate():
            async for _ in router.Generate(pb.GenerateRequest(prompt="hello there", max_tokens=8,
                                                              request_id="leaver"), _Context()):
                pass

        caller = asyncio.create_task(generate())
        assert await wait_until(lambda: prefill.sender.num_leases == 1)  # prefilled, its ticket not yet back
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        assert held.cancelled and held.cancelled[0].startswith("leaver/")
        held.let_go.set()  # the ticket arrives after the caller left
        assert await wait_until(lambda: prefill.sender.num_leases == 0, timeout_s=3.0)  # the TTL is 30 s

    asyncio.run(run())
    assert prefill.sender.leases.num_expired == 0
    assert_no_kv_left_and_close(prefill, decode)


def test_a_prefill_past_max_ticket_wait_s_is_deadline_exceeded_and_its_late_ticket_released(tiny_models,
                                                                                             monkeypatch):
    router, prefill, decode = in_process_router(tiny_models, monkeypatch, "prefill.max_batch_s=0.1",
                                                "prefill.max_ticket_wait_s=0.3")
    held = router.prefill = HeldPrefill(prefill)

    async def run():
        context = _Context()

        async def generate():
            async for _ in router.Generate(pb.GenerateRequest(prompt="hello there", max_tokens=8,
                                                              request_id="slow-1"), context):
                pass

        with pytest.raises(Exception) as error:
            await asyncio.wait_for(generate(), 2.0)
        assert not isinstance(error.value, TimeoutError)
        assert context.code.name == "DEADLINE_EXCEEDED"
        assert "prefill.max_ticket_wait_s = 0.3 s" in context.details and "slow-1" in context.details
        assert len(held.cancelled) == 1
        held.let_go.set()
        assert await wait_until(lambda: prefill.sender.num_leases == 0, timeout_s=3.0)

    asyncio.run(run())
    assert_no_kv_left_and_close(prefill, decode)


# ---- tokenizing: a bounded queue ------------------------------------------------------------------------------------

def test_a_request_past_a_full_tokenizer_queue_is_refused_at_once(tiny_models, monkeypatch):
    """server.max_tokenizer_queue = 1 and the tokenizer busy with one request: the next is RESOURCE_EXHAUSTED at
    once, naming the field, and the first is served once the tokenizer is free."""
    import services.router.server as router_module

    router, prefill, decode = in_process_router(tiny_models, monkeypatch, "server.max_tokenizer_queue=1")
    tokenizer_free, validate = threading.Event(), router_module.validate_request

    def busy_validate(*args):
        tokenizer_free.wait(10.0)
        return validate(*args)

    monkeypatch.setattr(router_module, "validate_request", busy_validate)

    async def generate(request_id: str, context: _Context) -> list:
        return [r async for r in router.Generate(pb.GenerateRequest(prompt="hello there", max_tokens=4,
                                                                    request_id=request_id), context)]

    async def run():
        first = asyncio.create_task(generate("first", _Context()))
        assert await wait_until(lambda: router.tokenizer_queue.num_queued == 1)
        context, started = _Context(), time.monotonic()
        with pytest.raises(Exception):
            await generate("second", context)
        assert time.monotonic() - started < 0.5 and context.code.name == "RESOURCE_EXHAUSTED"
        assert "server.max_tokenizer_queue = 1" in context.details and "second" in context.details
        tokenizer_free.set()
        assert (await first)[-1].finish_reason

    try:
        asyncio.run(run())
    finally:
        tokenizer_free.set()
    assert router.tokenizer_queue.num_queued == 0
    assert_no_kv_left_and_close(prefill, decode)


def test_the_status_behind_rays_wrapper_is_the_error_of_its_own_class():
    """Ray hands another replica's error over as a RayTaskError that also passes for the error's class; the router
    must answer with the error itself (raising Ray's wrapper made the proxy fail to deserialize it: INTERNAL)."""
    from ray.exceptions import RayTaskError

    from overfill.serving.types import ContextLengthExceeded
    from services.router.server import service_error_of

    try:
        raise ContextLengthExceeded("prompt (300 tokens) + max_tokens (16) exceeds the context of 256 tokens")
    except ContextLengthExceeded as error:
        wrapped = RayTaskError("prefill", "traceback", error).as_instanceof_cause()
    assert isinstance(wrapped, ContextLengthExceeded)  # what fooled the router
    found = service_error_of(wrapped)
    assert type(found) is ContextLengthExceeded and found.message.startswith("prompt (300 tokens)")

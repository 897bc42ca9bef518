"""The router asks the decode pool again when a replica refuses a request at admission (its lease intact): each
retry names the replicas that refused, a refusal from one of them (none other was left) ends it, time bounds it,
and no other error is retried."""

import asyncio

import pytest

from overfill.serving.types import AdmissionRefused, ServiceError, TokenChunk
from services.router.decode_admission import AdmissionRetry, admission_refusal_of, admitted_decode_stream

FAST = AdmissionRetry(timeout_s=10.0)


class FakeStream:
    """What `decode.options(stream=True).generate.remote(...)` returns: chunks, or an error at the first one."""

    def __init__(self, chunks: list[TokenChunk], error: Exception | None = None, hold: asyncio.Event | None = None):
        self.chunks, self.error, self.hold, self.cancelled = list(chunks), error, hold, False

    def __aiter__(self):
        return self

    async def __anext__(self) -> TokenChunk:
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class RayWrapped(Exception):
    """Like Ray's RayTaskError: the replica's exception travels as `.cause`."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


def pool(*streams: FakeStream):
    """start_stream for admitted_decode_stream: hands out `streams` in turn and records what each call avoided."""
    started, avoided = [], []

    def start_stream(avoid_replicas: tuple[str, ...]):
        avoided.append(avoid_replicas)
        started.append(streams[len(started)])
        return started[-1]
    return start_stream, started, avoided


def full(replica_id: str) -> RayWrapped:
    return RayWrapped(AdmissionRefused("RESOURCE_EXHAUSTED", "decode replica is full (2 running, 2 waiting)",
                                       replica_id))


def held(replica_id: str) -> RayWrapped:
    return RayWrapped(AdmissionRefused("UNAVAILABLE", "decode replica refused request 'r': its model thread is held",
                                       replica_id))


CHUNK = TokenChunk(token_ids=[7], finish_reason=None)


def test_a_retry_names_every_replica_that_refused_so_the_pool_ranks_them_last():
    start_stream, started, avoided = pool(FakeStream([], held("a")), FakeStream([], full("b")), FakeStream([CHUNK]))
    retries = []
    stream, first = asyncio.run(admitted_decode_stream(start_stream, "r", FAST, on_retry=lambda: retries.append(1)))
    assert first == CHUNK and stream is started[2] and len(retries) == 2
    assert avoided == [(), ("a",), ("a", "b")]
    assert not any(s.cancelled for s in started)


def test_a_refusal_from_a_replica_that_refused_already_is_the_status():
    """Ranked last and chosen anyway: no other replica was left (one replica, or every one refused)."""
    start_stream, started, avoided = pool(FakeStream([], full("a")), FakeStream([], full("a")), FakeStream([CHUNK]))
    with pytest.raises(RayWrapped) as error:
        asyncio.run(admitted_decode_stream(start_stream, "r", FAST))
    assert admission_refusal_of(error.value).code == "RESOURCE_EXHAUSTED" and avoided == [(), ("a",)]


def test_retries_are_bounded_by_time_not_by_a_count():
    start_stream, started, _ = pool(*(FakeStream([], held(f"r{i}")) for i in range(20)))  # a pool of 20, all held
    clock = iter(range(100)).__next__  # a second passes at each look at the clock
    with pytest.raises(RayWrapped):
        asyncio.run(admitted_decode_stream(start_stream, "r", AdmissionRetry(timeout_s=5.0), clock=clock))
    assert 4 <= len(started) <= 6  # not 3 (the old count), not 20 (every replica)


def test_a_refusal_without_a_replica_id_is_not_asked_again():
    start_stream, started, _ = pool(FakeStream([], full("")), FakeStream([CHUNK]))
    with pytest.raises(RayWrapped):
        asyncio.run(admitted_decode_stream(start_stream, "r", FAST))
    assert len(started) == 1


def test_no_retry_when_the_time_budget_is_zero():
    start_stream, started, _ = pool(FakeStream([], full("a")), FakeStream([CHUNK]))
    with pytest.raises(RayWrapped):
        asyncio.run(admitted_decode_stream(start_stream, "r", AdmissionRetry(timeout_s=0.0)))
    assert len(started) == 1


@pytest.mark.parametrize("error", [RayWrapped(ServiceError("ABORTED", "lease gone")),
                                   RayWrapped(ServiceError("RESOURCE_EXHAUSTED", "prompt + max_tokens exceeds 256")),
                                   RuntimeError("replica died")])
def test_other_errors_are_not_retried(error):
    start_stream, started, _ = pool(FakeStream([], error), FakeStream([CHUNK]))
    with pytest.raises(type(error)):
        asyncio.run(admitted_decode_stream(start_stream, "r", FAST))
    assert len(started) == 1


def test_a_stream_that_ends_at_once_gives_no_first_chunk():
    start_stream, _, _ = pool(FakeStream([]))
    assert asyncio.run(admitted_decode_stream(start_stream, "r", FAST))[1] is None


def test_cancelled_while_waiting_for_the_first_chunk_cancels_the_stream():
    hold = asyncio.Event()
    start_stream, started, _ = pool(FakeStream([CHUNK], hold=hold))

    async def run():
        task = asyncio.create_task(admitted_decode_stream(start_stream, "r", FAST))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert started[0].cancelled


def test_refusals_survive_pickling_as_admission_refusals():
    import pickle

    refusal = pickle.loads(pickle.dumps(AdmissionRefused("UNAVAILABLE", "stuck", "replica-7")))
    assert isinstance(refusal, AdmissionRefused) and refusal.code == "UNAVAILABLE" and refusal.message == "stuck"
    assert refusal.replica_id == "replica-7"

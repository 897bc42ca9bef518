"""The router asks the decode pool again when a replica refuses a request at admission (its lease intact), only
while another replica could take it, and never for any other error."""

import asyncio

import pytest

from overfill.serving.types import AdmissionRefused, ServiceError, TokenChunk
from services.router.decode_admission import AdmissionRetry, admission_refusal_of, admitted_decode_stream

FAST = AdmissionRetry(tries=3, pause_s=0.01)


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
    started = []

    def start_stream():
        started.append(streams[len(started)])
        return started[-1]
    return start_stream, started


def replicas(n: int):
    async def count() -> int:
        return n
    return count


FULL = RayWrapped(AdmissionRefused("RESOURCE_EXHAUSTED", "decode replica is full (2 running, 2 waiting)"))
STUCK = RayWrapped(AdmissionRefused("UNAVAILABLE", "decode replica refused request 'r': its model thread is held"))
CHUNK = TokenChunk(token_ids=[7], finish_reason=None)


def test_a_refusal_is_asked_again_and_the_next_replica_serves():
    start_stream, started = pool(FakeStream([], STUCK), FakeStream([], FULL), FakeStream([CHUNK]))
    retries = []
    stream, first = asyncio.run(admitted_decode_stream(start_stream, replicas(2), "r", FAST,
                                                       on_retry=lambda: retries.append(1)))
    assert first == CHUNK and stream is started[2] and len(started) == 3 and len(retries) == 2
    assert not any(s.cancelled for s in started)


def test_the_last_refusal_is_the_status_after_all_tries():
    start_stream, started = pool(*(FakeStream([], FULL) for _ in range(3)))
    with pytest.raises(RayWrapped) as error:
        asyncio.run(admitted_decode_stream(start_stream, replicas(3), "r", FAST))
    assert admission_refusal_of(error.value).code == "RESOURCE_EXHAUSTED" and len(started) == 3


def test_one_decode_replica_is_asked_once():
    start_stream, started = pool(FakeStream([], FULL), FakeStream([CHUNK]))
    with pytest.raises(RayWrapped):
        asyncio.run(admitted_decode_stream(start_stream, replicas(1), "r", FAST))
    assert len(started) == 1


@pytest.mark.parametrize("error", [RayWrapped(ServiceError("ABORTED", "lease gone")),
                                   RayWrapped(ServiceError("RESOURCE_EXHAUSTED", "prompt + max_tokens exceeds 256")),
                                   RuntimeError("replica died")])
def test_other_errors_are_not_retried(error):
    start_stream, started = pool(FakeStream([], error), FakeStream([CHUNK]))
    with pytest.raises(type(error)):
        asyncio.run(admitted_decode_stream(start_stream, replicas(2), "r", FAST))
    assert len(started) == 1


def test_a_stream_that_ends_at_once_gives_no_first_chunk():
    start_stream, _ = pool(FakeStream([]))
    assert asyncio.run(admitted_decode_stream(start_stream, replicas(2), "r", FAST))[1] is None


def test_cancelled_while_waiting_for_the_first_chunk_cancels_the_stream():
    hold = asyncio.Event()
    start_stream, started = pool(FakeStream([CHUNK], hold=hold))

    async def run():
        task = asyncio.create_task(admitted_decode_stream(start_stream, replicas(2), "r", FAST))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert started[0].cancelled


def test_refusals_survive_pickling_as_admission_refusals():
    import pickle

    refusal = pickle.loads(pickle.dumps(AdmissionRefused("UNAVAILABLE", "stuck")))
    assert isinstance(refusal, AdmissionRefused) and refusal.code == "UNAVAILABLE" and refusal.message == "stuck"

"""Prefill and decode workers without Ray: same tokens as in-process generation, continuous batching, cancellation
and back-pressure, and no KV left behind (leases, slots)."""

import asyncio
import collections
import dataclasses
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from overfill.engine.generate import TwoStageEngine
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.types import AdmissionRefused, PrefillRequest, ServiceError
from overfill.status import StatusCode
from overfill.transport.base import KVTransferError, make_receiver, make_sender
from tests.tiny import tiny_decoder, tiny_model

EOS = 2
KV_SECRET = "workers-test-secret"


@pytest.fixture(scope="module")
def models():
    full = tiny_model("qwen3")
    decoder = tiny_decoder(full, 32, 48)
    return ModelRunner(full), ModelRunner(decoder)


def make_workers(models, num_slots=4, max_waiting=8, max_queued=32, lease_ttl_s=30.0, transport="inprocess"):
    full, decoder = models
    sender = make_sender(transport, secret=KV_SECRET, lease_ttl_s=lease_ttl_s, expiry_interval_s=0.05)
    receiver = make_receiver(transport, secret=KV_SECRET)
    prefill = PrefillWorker(full, sender, {EOS}, PrefillSettings(max_seq_len=128, max_batch_tokens=64,
                                                                  max_batch_size=4, max_queued_requests=max_queued))
    decode = DecodeWorker(decoder, receiver, {EOS}, DecodeSettings(num_slots=num_slots, max_seq_len=128,
                                                                   max_waiting=max_waiting))
    return prefill, decode, sender


async def two_stage(prefill, decode, request_id, prompt, sampling):
    result = await prefill.prefill(PrefillRequest(request_id, prompt, sampling))
    tokens = [result.first_token]
    if result.finish_reason is None:
        async for chunk in decode.generate(result, sampling):
            tokens += chunk.token_ids
    return tokens


PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8], [1, 6, 1, 8, 0, 3, 3, 9, 8, 8, 7], [5, 7, 7], [9, 9], [4, 4, 4, 4, 4]]


def test_workers_match_in_process_generation_with_continuous_batching(models):
    full, decoder = models
    prefill, decode, sender = make_workers(models, num_slots=3)  # fewer slots than requests: some wait for a slot
    batch_sizes = []
    original_step = decode._step
    decode._step = lambda plan: batch_sizes.append(len(plan.decode)) or original_step(plan)
    params = [SamplingParams(max_new_tokens=n) for n in (12, 5, 9, 16, 3, 7)]
    seeded = SamplingParams(temperature=0.9, top_p=0.8, seed=11, max_new_tokens=10)

    async def run():
        greedy = [two_stage(prefill, decode, f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(PROMPTS, params))]
        return await asyncio.gather(*greedy, two_stage(prefill, decode, "seeded", PROMPTS[0], seeded))

    outputs = asyncio.run(run())
    engine = TwoStageEngine(full, decoder, {EOS})
    expected = [engine.generate([p], sp, "overfill")[0].token_ids for p, sp in zip(PROMPTS, params)]
    expected.append(engine.generate([PROMPTS[0]], seeded, "overfill")[0].token_ids)
    assert outputs == expected
    assert max(batch_sizes) == 3  # sequences shared steps
    assert decode.cache.num_free_slots == 3 and sender.num_leases == 0 and prefill.cache.num_free_slots == 4
    prefill.close(), decode.close()


def test_a_message_budget_sends_fewer_larger_messages_with_the_same_tokens(models):
    """4 streams share 0.1 message/s: a stream gets its first decoded token at once, its last with everything held,
    and in between a message only from a step it ran alone (streams join as their KV arrives, so a stream may run
    alone for a step or two; which steps, the test records)."""
    full, decoder = models
    sender = make_sender("inprocess", secret=KV_SECRET)
    prefill = PrefillWorker(full, sender, {EOS}, PrefillSettings(max_seq_len=128))
    decode = DecodeWorker(decoder, make_receiver("inprocess", secret=KV_SECRET), {EOS},
                          DecodeSettings(num_slots=4, max_seq_len=128, stream_messages_per_s=0.1))
    steps_alone = collections.Counter()  # request id -> steps in which it was the only running stream
    original_step = decode._step

    def recording_step(plan):
        if len(plan.decode) == 1:
            steps_alone[plan.decode[0].request_id] += 1
        return original_step(plan)

    decode._step = recording_step
    params = SamplingParams(max_new_tokens=12)

    async def stream(result):
        return [result.first_token], [chunk.token_ids async for chunk in decode.generate(result, params)]

    async def run():  # every prompt prefilled first, so the four streams start decoding together
        results = await asyncio.gather(*(prefill.prefill(PrefillRequest(f"paced-{i}", prompt, params))
                                         for i, prompt in enumerate(PROMPTS[:4])))
        return await asyncio.gather(*(stream(result) for result in results))

    outputs = asyncio.run(run())
    engine = TwoStageEngine(full, decoder, {EOS})
    for i, ((first, messages), prompt) in enumerate(zip(outputs, PROMPTS)):
        assert first + [t for message in messages for t in message] == \
            engine.generate([prompt], params, "overfill")[0].token_ids
        assert len(messages[0]) == 1  # the first decoded token is never held
        assert len(messages) <= 2 + steps_alone[f"paced-{i}"]
    num_messages = sum(len(messages) for _, messages in outputs)
    assert num_messages < sum(len(message) for _, messages in outputs for message in messages)
    assert decode.cache.num_free_slots == 4 and sender.num_leases == 0
    prefill.close(), decode.close()


def test_logprobs_come_with_every_token_first_from_the_full_model_then_from_the_decoder(models):
    """One entry per token, through a message budget that merges tokens into fewer messages; the first is the full
    model's log-softmax at the prompt's end; greedy tokens are their position's most likely."""
    full, decoder = models
    sender = make_sender("inprocess", secret=KV_SECRET)
    prefill = PrefillWorker(full, sender, {EOS}, PrefillSettings(max_seq_len=128))
    decode = DecodeWorker(decoder, make_receiver("inprocess", secret=KV_SECRET), {EOS},
                          DecodeSettings(num_slots=4, max_seq_len=128, stream_messages_per_s=0.1))
    with_logprobs, plain = SamplingParams(max_new_tokens=12, logprobs=3), SamplingParams(max_new_tokens=12)

    async def stream(request_id, prompt, params):
        result = await prefill.prefill(PrefillRequest(request_id, prompt, params))
        return result, [chunk async for chunk in decode.generate(result, params)]

    async def run():
        return await asyncio.gather(stream("lp", PROMPTS[0], with_logprobs), stream("plain", PROMPTS[1], plain),
                                    stream("lp2", PROMPTS[2], with_logprobs))

    (result, chunks), (plain_result, plain_chunks), _ = asyncio.run(run())
    with torch.no_grad():  # the full model the `models` fixture wraps (seeded: the same weights)
        expected_first = torch.log_softmax(tiny_model("qwen3")(torch.tensor([PROMPTS[0]])).logits[0, -1], dim=-1)
    first = result.first_logprobs
    assert first.token_id == result.first_token and len(first.top) == 3
    assert first.logprob == pytest.approx(expected_first[result.first_token].item(), abs=1e-5)
    decoded = [entry for chunk in chunks for entry in chunk.logprobs]
    assert [e.token_id for e in decoded] == [t for chunk in chunks for t in chunk.token_ids]
    assert len(decoded) == 11 and any(len(chunk.token_ids) > 1 for chunk in chunks)  # merged messages
    assert all(e.top[0] == (e.token_id, e.logprob) and e.logprob <= 0 for e in [first, *decoded])
    assert plain_result.first_logprobs is None and all(chunk.logprobs is None for chunk in plain_chunks)
    prefill.close(), decode.close()


def test_cancelled_stream_frees_kv_on_both_sides(models):
    prefill, decode, sender = make_workers(models)

    async def run():
        sampling = SamplingParams(max_new_tokens=100)
        result = await prefill.prefill(PrefillRequest("c", PROMPTS[0], sampling))
        assert sender.num_leases == 1
        stream = decode.generate(result, sampling)
        await stream.__anext__()
        assert sender.num_leases == 0 and decode.cache.num_free_slots == 3  # pulled, released, holding one slot
        await stream.aclose()  # the client went away
        for _ in range(100):
            if decode.cache.num_free_slots == 4:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert decode.cache.num_free_slots == 4 and decode.stats()["num_running"] == 0
    prefill.close(), decode.close()


def test_a_stream_cancelled_while_its_kv_is_copied_in_gives_its_slot_back_clean(models):
    """The cancel lands while import_slot runs on the model thread: the slot is given back only after the copy ends,
    so no freed slot is left holding the cancelled request's length."""
    prefill, decode, sender = make_workers(models)
    importing, copy_may_end = threading.Event(), threading.Event()
    original_import = decode.cache.import_slot

    def slow_import(slot, k, v):
        importing.set()
        copy_may_end.wait(5.0)
        original_import(slot, k, v)

    decode.cache.import_slot = slow_import

    async def run():
        sampling = SamplingParams(max_new_tokens=20)
        result = await prefill.prefill(PrefillRequest("imp", PROMPTS[0], sampling))
        consumer = asyncio.create_task(anext(decode.generate(result, sampling)))
        await asyncio.to_thread(importing.wait, 5.0)
        consumer.cancel()
        await asyncio.sleep(0.05)  # a step boundary may pass (it gives the slot back) before the copy ends
        copy_may_end.set()
        await asyncio.gather(consumer, return_exceptions=True)
        decode.cache.import_slot = original_import
        assert await wait_until(lambda: decode.cache.num_free_slots == 4)
        await asyncio.sleep(0.05)  # the copy, had it outlived the slot's release, would land now

    asyncio.run(run())
    assert decode.cache.lengths == [0, 0, 0, 0] and sender.num_leases == 0
    prefill.close(), decode.close()


def test_a_batch_whose_leasing_fails_part_way_holds_no_lease(models):
    """The sender publishes the first request's KV, then fails: both requests fail, and the lease already published
    is released at once, not left to its TTL."""
    prefill, decode, sender = make_workers(models)
    original_publish = sender.publish
    calls = []

    def publish_then_fail(request_id, k, v):
        calls.append(request_id)
        if len(calls) == 2:
            raise OSError("the KV service stopped")
        return original_publish(request_id, k, v)

    sender.publish = publish_then_fail

    async def run():
        return await asyncio.gather(*(prefill.prefill(PrefillRequest(f"p{i}", PROMPTS[i], SamplingParams()))
                                      for i in range(2)), return_exceptions=True)

    outcomes = asyncio.run(run())
    assert len(calls) == 2  # one batch
    assert all(isinstance(o, ServiceError) and o.code is StatusCode.INTERNAL and "OSError" in str(o)
               and "KV service stopped" not in str(o)  # the exception's own words stay in the replica's log
               for o in outcomes)
    assert sender.num_leases == 0 and prefill.stats()["leased_tokens"] == 0
    prefill.close(), decode.close()


def test_cancel_while_queued_for_prefill_leaves_nothing(models):
    prefill, decode, sender = make_workers(models)

    async def run():
        tasks = [asyncio.create_task(prefill.prefill(PrefillRequest(f"q{i}", PROMPTS[i % 6], SamplingParams())))
                 for i in range(6)]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # let a batch already on the model thread finish

    asyncio.run(run())
    assert sender.num_leases == 0 and prefill.stats()["num_waiting"] == 0 and prefill.cache.num_free_slots == 4
    prefill.close(), decode.close()


def test_back_pressure_and_limits_are_immediate_errors(models):
    prefill, decode, sender = make_workers(models, num_slots=1, max_waiting=0, max_queued=2)

    async def run():
        with pytest.raises(ServiceError) as error:
            await prefill.prefill(PrefillRequest("long", list(range(128)), SamplingParams()))
        assert error.value.code == "RESOURCE_EXHAUSTED"

        sampling = SamplingParams(max_new_tokens=50)
        first = await prefill.prefill(PrefillRequest("a", PROMPTS[0], sampling))
        second = await prefill.prefill(PrefillRequest("b", PROMPTS[1], sampling))
        stream = decode.generate(first, sampling)
        await stream.__anext__()  # holds the only slot
        with pytest.raises(AdmissionRefused) as error:  # the router may ask another decode replica
            await decode.generate(second, sampling).__anext__()
        assert error.value.code == "RESOURCE_EXHAUSTED" and "decode replica is full" in error.value.message
        await stream.aclose()
        prefill.sender.release("b")

        # 4 staging slots (max_batch_size) + 2 waiting (max_queued_requests) are admitted; the rest are refused.
        queued = [asyncio.create_task(prefill.prefill(PrefillRequest(f"x{i}", PROMPTS[0], SamplingParams())))
                  for i in range(8)]
        results = await asyncio.gather(*queued, return_exceptions=True)
        refused = [r for r in results if isinstance(r, ServiceError)]
        assert len(refused) == 2 and all(r.code == "RESOURCE_EXHAUSTED" for r in refused)
        assert "prefill queue is full (6 requests waiting)" in refused[0].message
        for r in results:
            if not isinstance(r, Exception):
                prefill.sender.release(r.request_id)

    asyncio.run(run())
    assert sender.num_leases == 0
    prefill.close(), decode.close()


def workers_with_a_blocked_step(models, **decode_settings):
    """A prefill and a 2-slot decode worker whose every step blocks until the returned event is set (a wedged
    device). Returns (sender, prefill, decode, device_back)."""
    full, decoder = models
    sender = make_sender("inprocess", secret=KV_SECRET)
    prefill = PrefillWorker(full, sender, {EOS}, PrefillSettings(max_seq_len=128))
    decode = DecodeWorker(decoder, make_receiver("inprocess", secret=KV_SECRET), {EOS},
                          DecodeSettings(num_slots=2, max_seq_len=128, **decode_settings))
    device_back = threading.Event()
    original_step = decode._step
    decode._step = lambda plan: device_back.wait() and original_step(plan)
    return sender, prefill, decode, device_back


def test_a_step_that_never_returns_fails_its_requests_refuses_new_ones_and_fails_the_health_check(models):
    """A wedged device: the step blocks until released. Its request gets DEADLINE_EXCEEDED at max_step_s; meanwhile
    new requests are refused at once with UNAVAILABLE (their leases untouched, to be served elsewhere) and the
    replica says so in its stats; past unhealthy_step_s check_health raises. Once the step returns, all is well."""
    full, decoder = models
    sender, prefill, decode, device_back = workers_with_a_blocked_step(models, max_step_s=0.3, unhealthy_step_s=0.8)
    sampling = SamplingParams(max_new_tokens=8)

    async def run():
        stuck = await prefill.prefill(PrefillRequest("stuck", PROMPTS[0], sampling))
        with pytest.raises(ServiceError) as error:
            [chunk async for chunk in decode.generate(stuck, sampling)]
        assert error.value.code == "DEADLINE_EXCEEDED" and "decode.max_step_s" in error.value.message
        decode.check_health()  # stuck past max_step_s, not yet past unhealthy_step_s
        assert decode.stats()["stuck_step_s"] > 0.3

        waiting = await prefill.prefill(PrefillRequest("next", PROMPTS[1], sampling))
        started = time.monotonic()
        with pytest.raises(AdmissionRefused) as error:
            await decode.generate(waiting, sampling).__anext__()
        assert error.value.code == "UNAVAILABLE" and "'next'" in error.value.message
        assert time.monotonic() - started < 0.1 and sender.num_leases == 1  # its KV waits for another replica

        await asyncio.sleep(0.9)
        with pytest.raises(RuntimeError, match="decode.unhealthy_step_s"):
            decode.check_health()

        device_back.set()
        for _ in range(100):
            if decode.stats()["stuck_step_s"] == 0 and decode.cache.num_free_slots == 2:
                break
            await asyncio.sleep(0.01)
        decode.check_health()
        return [waiting.first_token] + [t async for chunk in decode.generate(waiting, sampling) for t in chunk.token_ids]

    tokens = asyncio.run(run())
    assert tokens == TwoStageEngine(full, decoder, {EOS}).generate([PROMPTS[1]], sampling, "overfill")[0].token_ids
    assert decode.cache.num_free_slots == 2 and sender.num_leases == 0
    prefill.close(), decode.close()


def a_prefill_worker_with_a_blocked_batch(models, **prefill_settings):
    """A prefill worker whose every batch blocks until the returned event is set (a wedged device). Returns (sender,
    prefill, device_back)."""
    full, _ = models
    sender = make_sender("inprocess", secret=KV_SECRET)
    prefill = PrefillWorker(full, sender, {EOS}, PrefillSettings(max_seq_len=128, max_batch_size=2,
                                                                  **prefill_settings))
    device_back = threading.Event()
    original_batch = prefill._prefill_batch
    prefill._prefill_batch = lambda plan: device_back.wait() and original_batch(plan)
    return sender, prefill, device_back


def test_a_prefill_batch_that_never_returns_fails_its_requests_refuses_new_ones_and_fails_the_health_check(models):
    """A wedged device under prefill: the batch's request gets DEADLINE_EXCEEDED at max_batch_s and its KV is never
    leased; meanwhile new requests are refused at once with UNAVAILABLE (nothing queued behind the batch); past
    unhealthy_batch_s check_health raises, so Serve replaces the replica. Once the batch returns, all is well."""
    sender, prefill, device_back = a_prefill_worker_with_a_blocked_batch(models, max_batch_s=0.3,
                                                                          unhealthy_batch_s=0.8)
    sampling = SamplingParams(max_new_tokens=8)

    def unhealthy() -> bool:
        try:
            prefill.check_health()
        except RuntimeError as e:
            assert "prefill.unhealthy_batch_s = 0.8 s" in str(e)
            return True
        return False

    async def run():
        started = time.monotonic()
        with pytest.raises(ServiceError) as error:
            await prefill.prefill(PrefillRequest("stuck", PROMPTS[0], sampling))
        assert error.value.code == "DEADLINE_EXCEEDED" and "prefill.max_batch_s = 0.3 s" in error.value.message
        assert "'stuck'" in error.value.message and time.monotonic() - started < 2.0
        assert not unhealthy()  # stuck past max_batch_s, not yet past unhealthy_batch_s
        assert prefill.stats()["stuck_batch_s"] > 0.3  # the prefill request router ranks it last

        started = time.monotonic()
        with pytest.raises(ServiceError) as error:
            await prefill.prefill(PrefillRequest("next", PROMPTS[1], sampling))
        assert error.value.code == "UNAVAILABLE" and "'next'" in error.value.message
        assert "prefill.max_batch_s" in error.value.message and time.monotonic() - started < 0.1
        assert prefill.stats()["num_waiting"] == 0

        assert await wait_until(unhealthy)
        device_back.set()
        assert await wait_until(lambda: not unhealthy() and prefill.cache.num_free_slots == 2)
        assert prefill.stats()["stuck_batch_s"] == 0
        after = await prefill.prefill(PrefillRequest("after", PROMPTS[1], sampling))
        assert sender.num_leases == 1  # the stuck request's KV was never leased
        sender.release(after.request_id)

    try:
        asyncio.run(run())
    finally:
        device_back.set()
    assert sender.num_leases == 0 and prefill.cache.num_free_slots == 2 and prefill.stats()["num_waiting"] == 0
    prefill.close()


def test_a_step_held_past_slow_step_s_sends_new_requests_elsewhere_unless_no_other_replica_is_left(models):
    """A step holds the model thread past slow_step_s but not yet max_step_s: the replica says so in its stats and
    refuses a new request at once (UNAVAILABLE, its KV untouched: another replica may take it), but admits it as the
    pool's last choice (`last_choice`: every other replica refused it too), serving it once the step returns."""
    full, decoder = models
    sender, prefill, decode, device_back = workers_with_a_blocked_step(models, slow_step_s=0.2, max_step_s=30.0)
    sampling = SamplingParams(max_new_tokens=8)

    async def run():
        slow = await prefill.prefill(PrefillRequest("slow", PROMPTS[0], sampling))
        slow_stream = decode.generate(slow, sampling)
        slow_first = asyncio.create_task(slow_stream.__anext__())  # its first step holds the model thread
        assert await wait_until(lambda: decode.stats()["held_step_s"] > 0.2)
        assert decode.stats()["stuck_step_s"] == 0

        other = await prefill.prefill(PrefillRequest("other", PROMPTS[1], sampling))
        free_before = decode.cache.num_free_slots
        started = time.monotonic()
        with pytest.raises(AdmissionRefused) as error:
            await decode.generate(other, sampling).__anext__()
        assert error.value.code == "UNAVAILABLE" and "'other'" in error.value.message
        assert "decode.slow_step_s = 0.2 s" in error.value.message
        assert time.monotonic() - started < 0.1
        assert sender.num_leases == 1 and decode.cache.num_free_slots == free_before  # nothing touched

        async def as_last_choice() -> list[int]:  # no other replica was left
            return [t async for chunk in decode.generate(other, sampling, last_choice=True) for t in chunk.token_ids]

        last = asyncio.create_task(as_last_choice())
        await asyncio.sleep(0.1)
        assert not last.done()  # admitted, waiting for the step
        device_back.set()
        tokens = [other.first_token] + await last
        await slow_first
        async for _ in slow_stream:
            pass
        return tokens

    tokens = asyncio.run(run())
    assert tokens == TwoStageEngine(full, decoder, {EOS}).generate([PROMPTS[1]], sampling, "overfill")[0].token_ids
    assert decode.stats()["held_step_s"] == 0 and decode.cache.num_free_slots == 2 and sender.num_leases == 0
    prefill.close(), decode.close()


async def wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return condition()


def test_unclaimed_lease_expires(models):
    prefill, decode, sender = make_workers(models, lease_ttl_s=0.05)

    async def run():
        result = await prefill.prefill(PrefillRequest("orphan", PROMPTS[0], SamplingParams(max_new_tokens=4)))
        await asyncio.sleep(0.1)
        with pytest.raises(ServiceError) as error:
            async for _ in decode.generate(result, SamplingParams(max_new_tokens=4)):
                pass
        assert error.value.code == "ABORTED" and "no longer leased" in error.value.message  # the lease expired

    asyncio.run(run())
    assert sender.num_leases == 0 and sender.leases.num_expired == 1 and decode.cache.num_free_slots == 4
    prefill.close(), decode.close()


def test_pulls_from_a_blackholed_prefill_replica_fail_in_time_and_hold_up_no_other_request(models):
    """Five requests' KV lies behind an address that accepts connections and never answers (dropped packets); a
    sixth's KV is on a live KV service. The live one is served at once, not after the others' deadlines, and each
    blackholed one fails within kv.pull_timeout_s of its admission."""
    full, decoder = models
    sender = make_sender("grpc", secret=KV_SECRET)
    prefill = PrefillWorker(full, sender, {EOS}, PrefillSettings(max_seq_len=128))
    pull_timeout_s = 2.0
    decode = DecodeWorker(decoder, make_receiver("grpc", secret=KV_SECRET), {EOS},
                          DecodeSettings(num_slots=8, max_seq_len=128, kv_pull_timeout_s=pull_timeout_s))
    blackhole = socket.create_server(("127.0.0.1", 0), backlog=16)  # never accepts: the handshake never completes
    blackhole_address = f"127.0.0.1:{blackhole.getsockname()[1]}"
    sampling = SamplingParams(max_new_tokens=4)

    async def run():
        results = [await prefill.prefill(PrefillRequest(f"b{i}", PROMPTS[i], sampling)) for i in range(6)]
        lost = [dataclasses.replace(r, ticket=dataclasses.replace(r.ticket, address=blackhole_address))
                for r in results[:5]]
        started = time.monotonic()

        async def finish_time(result):
            try:
                async for _ in decode.generate(result, sampling):
                    pass
                return "served", time.monotonic() - started
            except ServiceError as e:
                messages.append(e.message)
                return e.code, time.monotonic() - started

        return await asyncio.gather(*(finish_time(r) for r in lost), finish_time(results[5]))

    messages = []

    try:
        outcomes = asyncio.run(run())
    finally:
        blackhole.close()
    *blackholed, live = outcomes
    assert live[0] == "served" and live[1] < pull_timeout_s / 2
    for code, elapsed_s in blackholed:
        assert code in (StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE)
        assert elapsed_s < pull_timeout_s + 1.0
    assert len(messages) == 5 and all("KV pull for request" in m for m in messages)
    assert not any(blackhole_address.split(":")[1] in m or "127.0.0.1" in m for m in messages)  # no internal address
    assert decode.cache.num_free_slots == 8
    for i in range(5):  # their leases were never pulled (they expire on their own; freed here)
        sender.release(f"b{i}")
    assert sender.num_leases == 0
    prefill.close(), decode.close(), sender.close()


# ---- waiting for a decode slot longer than the lease ----------------------------------------------------------------

HOLD = SamplingParams(max_new_tokens=6)
HOLD_SLOT_S = 1.5  # the request holding the only decode slot stalls its first step this long
LEASE_TTL_S = 0.4  # ... so a request waiting behind it waits for over 3 lease TTLs


async def hold_the_only_slot(prefill, decode):
    """Prefill two requests; the first takes decode's only slot and stalls there for HOLD_SLOT_S (a stalling step,
    tests/faults/chaos.py); returns (holder task, the second request's prefill result, when the holder's slot was
    taken)."""
    from tests.faults.chaos import FaultPlan, install_decode_faults

    holder, waiter = [await prefill.prefill(PrefillRequest(rid, prompt, HOLD))
                      for rid, prompt in (("holder", PROMPTS[0]), ("waiter", PROMPTS[2]))]
    plans = {"holder": FaultPlan(stall_after_tokens=1, stall_step_s=HOLD_SLOT_S)}

    async def plan_of(lease_id):
        return plans.get(lease_id)

    install_decode_faults(decode, plan_of)

    async def run_holder():
        chunks = decode.generate(holder, HOLD)
        return [holder.first_token] + [t async for chunk in chunks for t in chunk.token_ids]

    task = asyncio.create_task(run_holder())
    while decode.stats()["num_running"] == 0:
        await asyncio.sleep(0.005)
    return task, waiter, time.monotonic()


async def finish(decode, result, sampling) -> list[int]:
    return [result.first_token] + [t async for chunk in decode.generate(result, sampling) for t in chunk.token_ids]


def assert_nothing_held(prefill, decode, sender) -> None:
    stats = decode.stats()
    assert sender.num_leases == 0 and stats["num_leases_kept"] == 0 and stats["num_waiting"] == 0
    assert stats["num_free_slots"] == decode.settings.num_slots and prefill.cache.num_free_slots == 4


@pytest.mark.parametrize("transport", ["inprocess", "grpc"])
def test_a_request_waiting_for_a_slot_past_its_lease_ttl_keeps_its_lease_and_completes(models, transport):
    full, decoder = models
    prefill, decode, sender = make_workers(models, num_slots=1, lease_ttl_s=LEASE_TTL_S, transport=transport)

    async def run():
        holder, waiter, held_at = await hold_the_only_slot(prefill, decode)
        waited = asyncio.create_task(finish(decode, waiter, HOLD))
        await asyncio.sleep(0.05)
        assert decode.stats()["num_waiting"] == 1 and decode.stats()["num_leases_kept"] == 1
        outputs = [await holder, await waited]
        assert time.monotonic() - held_at >= 3 * LEASE_TTL_S  # the waiter really waited past its lease
        return outputs

    outputs = asyncio.run(run())
    engine = TwoStageEngine(full, decoder, {EOS})
    assert outputs == [engine.generate([p], HOLD, "overfill")[0].token_ids for p in (PROMPTS[0], PROMPTS[2])]
    assert decode.lease_keeper.num_renewals >= 3 * 3 and decode.lease_keeper.num_lost == 0  # every TTL/3
    assert sender.leases.num_expired == 0 and sender.leases.num_released == 2
    assert_nothing_held(prefill, decode, sender)
    prefill.close(), decode.close(), sender.close()


def test_a_waiting_request_whose_renewals_stop_loses_its_lease_at_the_ttl(models):
    prefill, decode, sender = make_workers(models, num_slots=1, lease_ttl_s=LEASE_TTL_S, transport="grpc")

    def unreachable(address, request_ids, timeout_s=10.0):  # decode can no longer reach the KV service to renew
        raise KVTransferError("UNAVAILABLE", f"{address} unreachable (simulated)")

    decode.lease_keeper.receiver = SimpleNamespace(renew=unreachable)

    async def run():
        holder, waiter, _ = await hold_the_only_slot(prefill, decode)
        published = time.monotonic()  # (just after: the waiter's lease was made before the holder took the slot)
        waited = asyncio.create_task(finish(decode, waiter, HOLD))
        while sender.num_leases:  # the expiry thread frees it (every 0.05 s)
            await asyncio.sleep(0.01)
        assert time.monotonic() - published < LEASE_TTL_S + 0.3 and not waited.done()  # at its TTL, while waiting
        assert sender.leases.num_expired == 1
        with pytest.raises(ServiceError) as error:
            await waited
        assert error.value.code == "ABORTED" and "'waiter'" in error.value.message
        assert "no longer leased" in error.value.message
        await holder

    asyncio.run(run())
    assert_nothing_held(prefill, decode, sender)
    prefill.close(), decode.close(), sender.close()


def test_a_waiting_request_whose_lease_is_gone_fails_fast_with_aborted(models):
    prefill, decode, sender = make_workers(models, num_slots=1, lease_ttl_s=LEASE_TTL_S)

    async def run():
        holder, waiter, held_at = await hold_the_only_slot(prefill, decode)
        waited = asyncio.create_task(finish(decode, waiter, HOLD))
        await asyncio.sleep(0.05)
        assert decode.stats()["num_leases_kept"] == 1
        sender.release("waiter")  # e.g. the prefill replica restarted: its KV is gone
        with pytest.raises(ServiceError) as error:
            await waited
        assert error.value.code == "ABORTED" and "while it waited for a decode slot" in error.value.message
        assert time.monotonic() - held_at < HOLD_SLOT_S and not holder.done()  # the next renewal saw it, no slot
        assert decode.stats()["num_waiting"] == 0 and decode.stats()["num_leases_lost_waiting"] == 1
        await holder

    asyncio.run(run())
    assert_nothing_held(prefill, decode, sender)
    prefill.close(), decode.close(), sender.close()


def test_a_cancelled_waiting_request_stops_renewing_and_gives_no_slot_away(models):
    prefill, decode, sender = make_workers(models, num_slots=1, lease_ttl_s=LEASE_TTL_S)

    async def run():
        holder, waiter, _ = await hold_the_only_slot(prefill, decode)
        waited = asyncio.create_task(finish(decode, waiter, HOLD))
        await asyncio.sleep(0.2)
        renewals = decode.lease_keeper.num_renewals
        assert renewals >= 1 and decode.stats()["num_leases_kept"] == 1
        waited.cancel()  # the client went away while waiting
        await asyncio.gather(waited, return_exceptions=True)
        assert decode.stats()["num_leases_kept"] == 0 and decode.stats()["num_waiting"] == 0
        await asyncio.sleep(LEASE_TTL_S)
        assert decode.lease_keeper.num_renewals == renewals  # nobody renews it any more: it expires at its TTL
        assert sender.leases.get("waiter") is None and sender.leases.num_expired == 1
        await holder
        assert await finish(decode, await prefill.prefill(PrefillRequest("after", PROMPTS[1], HOLD)), HOLD)

    asyncio.run(run())
    assert_nothing_held(prefill, decode, sender)
    prefill.close(), decode.close(), sender.close()


def test_a_decode_replica_names_itself_in_a_refusal_and_admits_as_the_last_choice(service_models):
    """services/decode without Ray: the refusal carries the replica's id (the router's next call names it, so the
    decode request router ranks it last); a call that names it already admits the request despite the slow step."""
    from overfill.serving.config import load_config
    from services.decode.server import DecodeServer
    from services.prefill.server import PrefillServer
    full_dir, decoder_dir = service_models
    config = load_config(None, [f"models.full={full_dir}", f"models.decoder={decoder_dir}", "decode.slow_step_s=0.2",
                                "decode.num_slots=2"]).with_secret()
    prefill, decode = PrefillServer(config), DecodeServer(config)
    decode.replica_id = "decode-a"  # what Ray Serve's replica context gives in a replica
    device_back = threading.Event()
    original_step = decode.worker._step
    decode.worker._step = lambda plan: device_back.wait() and original_step(plan)
    sampling = SamplingParams(max_new_tokens=4)

    async def run():
        slow = await prefill.prefill(PrefillRequest("slow", [5, 6, 7], sampling))
        slow_stream = decode.generate(slow, sampling)
        slow_first = asyncio.create_task(slow_stream.__anext__())
        try:
            assert await wait_until(lambda: decode.worker.stats()["held_step_s"] > 0)
            other = await prefill.prefill(PrefillRequest("other", [5, 6, 8], sampling))
            with pytest.raises(AdmissionRefused) as error:
                await decode.generate(other, sampling, avoid_replicas=("decode-b",)).__anext__()
            assert error.value.replica_id == "decode-a"
            last = asyncio.create_task(decode.generate(other, sampling, avoid_replicas=("decode-b", "decode-a"))
                                       .__anext__())
            await asyncio.sleep(0.1)
        finally:
            # Before asyncio.run shuts its executor down: a failed assert must not leave the step's thread held
            # (asyncio.run would wait for it forever).
            device_back.set()
        assert (await last).token_ids
        await slow_first

    try:
        asyncio.run(run())
    finally:
        device_back.set()
        decode.__del__()
        prefill.worker.close(), prefill.sender.close()

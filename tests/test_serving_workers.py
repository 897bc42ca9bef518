"""Prefill and decode workers without Ray: same tokens as in-process generation, continuous batching, cancellation
and back-pressure, and no KV left behind (leases, slots)."""

import asyncio

import pytest

from overfill.engine.generate import TwoStageEngine
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.pruning import prune_model, select_channels
from overfill.calibration import estimate_importance
from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.types import PrefillRequest, ServiceError
from overfill.transport.base import make_receiver, make_sender
from tests.tiny import CORPUS, tiny_model, tiny_tokenizer

EOS = 2


@pytest.fixture(scope="module")
def models():
    full = tiny_model("qwen3")
    importance = estimate_importance(full, tiny_tokenizer(), CORPUS, progress=False)
    decoder = prune_model(full, select_channels(importance, 32, 48))
    return ModelRunner(full), ModelRunner(decoder)


def make_workers(models, num_slots=4, max_waiting=8, max_queued=32, lease_ttl_s=30.0):
    full, decoder = models
    sender, receiver = make_sender("inprocess", lease_ttl_s=lease_ttl_s), make_receiver("inprocess")
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
    decode._step = lambda batch: batch_sizes.append(len(batch)) or original_step(batch)
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
        with pytest.raises(ServiceError) as error:
            await decode.generate(second, sampling).__anext__()
        assert error.value.code == "RESOURCE_EXHAUSTED"
        await stream.aclose()
        prefill.sender.release("b")

        queued = [asyncio.create_task(prefill.prefill(PrefillRequest(f"x{i}", PROMPTS[0], SamplingParams())))
                  for i in range(5)]
        results = await asyncio.gather(*queued, return_exceptions=True)
        refused = [r for r in results if isinstance(r, ServiceError)]
        assert refused and all(r.code == "RESOURCE_EXHAUSTED" for r in refused)
        for r in results:
            if not isinstance(r, Exception):
                prefill.sender.release(r.request_id)

    asyncio.run(run())
    assert sender.num_leases == 0
    prefill.close(), decode.close()


def test_unclaimed_lease_expires(models):
    prefill, decode, sender = make_workers(models, lease_ttl_s=0.05)

    async def run():
        result = await prefill.prefill(PrefillRequest("orphan", PROMPTS[0], SamplingParams(max_new_tokens=4)))
        await asyncio.sleep(0.1)
        with pytest.raises(ServiceError) as error:
            async for _ in decode.generate(result, SamplingParams(max_new_tokens=4)):
                pass
        assert error.value.code == "ABORTED" and "NOT_FOUND" in error.value.message  # the lease expired

    asyncio.run(run())
    assert sender.num_leases == 0 and sender.leases.num_expired == 1 and decode.cache.num_free_slots == 4
    prefill.close(), decode.close()

"""The service end to end with `kv.transport=gloo`: KV metadata over the gRPC KV service, bytes over a 2-rank gloo
process group between the prefill and the decode replica (the CPU twin of the NCCL path). Greedy output equals the
in-process engine, concurrent streams share one cached group, and no KV is left. One cluster for the module."""

import asyncio

import pytest

from overfill.client import AsyncOverFillClient, OverFillClient
from tests.service_helpers import assert_no_kv_left, in_process, pool_stats, tiny_service

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with tiny_service(tmp_path_factory.mktemp("service-gloo"), "kv.transport=gloo", "kv.transfer_timeout_s=20") as service:
        yield service


def test_greedy_over_gloo_equals_in_process(service):
    with OverFillClient(service["address"]) as client:
        for prompt in ["What is the capital of France?", "one two three"]:
            token_ids = [t for piece in client.generate(prompt, max_tokens=20) for t in piece.token_ids]
            assert token_ids == in_process(service, prompt, 20)
    stats = pool_stats(service["config"], "decode")
    assert stats["kv_transfers"] == 2 and stats["kv_groups_opened"] == 1 and stats["kv_failed_transfers"] == 0
    assert_no_kv_left(service["config"])


def test_eight_concurrent_streams_over_one_group(service):
    prompts = [f"{word} is a word" for word in ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel"]]
    before = pool_stats(service["config"], "decode")

    async def run():
        async with AsyncOverFillClient(service["address"]) as client:
            async def one(prompt):
                return [t async for piece in client.generate(prompt, max_tokens=24) for t in piece.token_ids]
            return await asyncio.gather(*(one(p) for p in prompts))

    outputs = asyncio.run(run())
    assert outputs == [in_process(service, p, 24) for p in prompts]
    after = pool_stats(service["config"], "decode")
    assert after["kv_transfers"] - before["kv_transfers"] == len(prompts)
    assert after["kv_groups_opened"] == 1 and after["kv_failed_transfers"] == 0  # the pair's group was reused
    assert_no_kv_left(service["config"])

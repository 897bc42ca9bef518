"""The service end to end with `kv.transport=gloo`: KV metadata over the gRPC KV service, bytes over a 2-rank gloo
process group between the prefill and the decode replica (the CPU twin of the NCCL path). Greedy output equals the
in-process engine, concurrent streams share one cached group, a prefill replica that dies mid-transfer fails only its
request, and no KV is left. One application for the module; its pools run the chaos servers (tests/faults/chaos.py), so
the last test can hold one request's bytes back."""

import time

import pytest

from overfill.client import OverFillClient, OverFillError
from tests.faults.chaos import FaultPlan, arm
from tests.faults.replicas import kill_replica, replica_actors, wait_pool_restored
from tests.service_helpers import (EIGHT_PROMPTS, assert_no_kv_left, concurrent_greedy, in_process, pool_stats,
                                   tiny_service, wait_for)

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def service(service_models):
    with tiny_service(service_models, "kv.transport=gloo", "kv.transfer_timeout_s=20", chaos=True) as service:
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
    before = pool_stats(service["config"], "decode")
    outputs = concurrent_greedy(service["address"], EIGHT_PROMPTS, 24)
    assert outputs == [in_process(service, p, 24) for p in EIGHT_PROMPTS]
    after = pool_stats(service["config"], "decode")
    assert after["kv_transfers"] - before["kv_transfers"] == len(EIGHT_PROMPTS)
    assert after["kv_groups_opened"] == 1 and after["kv_failed_transfers"] == 0  # the pair's group was reused
    assert_no_kv_left(service["config"])


def test_a_prefill_replica_dying_mid_transfer_fails_only_its_request(service):
    """The prefill replica is killed while the decode replica waits in its gloo receive (the prefill side holds the
    bytes back: `delay_send_s`). That request ends with UNAVAILABLE naming it, long before the transfer timeout; the
    decode replica tears the pair's group down and keeps serving; Serve replaces the prefill replica and the next
    requests reach it over a new group, bit-exact; no KV is left on either side."""
    config, app = service["config"], service["config"].server.app_name
    before = pool_stats(config, "decode")
    prompt = "What is the capital of France?"
    arm("gloo-orphan-1", FaultPlan(delay_send_s=60))
    with OverFillClient(service["address"], timeout_s=60) as client:
        stream = client.generate(prompt, max_tokens=20, request_id="gloo-orphan-1")
        assert len(next(stream).token_ids) == 1  # the first token: the KV is leased, decode asked for the bytes
        assert wait_for(lambda: pool_stats(config, "decode")["kv_receiving"] == 1, 10)
        (prefill_replica,) = replica_actors(app, "prefill")
        kill_replica(app, "prefill", prefill_replica)
        started = time.monotonic()
        with pytest.raises(OverFillError) as error:
            list(stream)
    assert error.value.code == "UNAVAILABLE" and "gloo-orphan-1" in error.value.message
    assert "KV pull" in error.value.message and "link to it failed" in error.value.message
    assert "over gloo" not in error.value.message  # the transport's own words stay in the replica's log
    assert time.monotonic() - started < config.kv.transfer_timeout_s  # the dead peer is noticed, not timed out
    after = pool_stats(config, "decode")
    assert after["kv_failed_transfers"] == before["kv_failed_transfers"] + 1 and after["kv_groups"] == 0
    assert after["kv_receiving"] == 0 and after["num_free_slots"] == config.decode.num_slots

    wait_pool_restored(app, "prefill", config.prefill.num_replicas)
    assert prefill_replica not in replica_actors(app, "prefill")
    with OverFillClient(service["address"], timeout_s=60) as client:
        for prompt in [prompt, "one two three"]:
            token_ids = [t for piece in client.generate(prompt, max_tokens=20) for t in piece.token_ids]
            assert token_ids == in_process(service, prompt, 20)
    final = pool_stats(config, "decode")
    assert final["kv_groups_opened"] == after["kv_groups_opened"] + 1 and final["kv_groups"] == 1
    assert final["kv_failed_transfers"] == after["kv_failed_transfers"]
    assert_no_kv_left(config)

"""The DistServe-style request routers as pure functions of the replicas' reported stats (no cluster)."""

import asyncio
from types import SimpleNamespace

from services.router.request_router import LeastQueuedTokensRouter, MostFreeKVRouter


def replicas(*stats):
    return [SimpleNamespace(name=f"r{i}", replica_id=SimpleNamespace(unique_id=f"r{i}"), routing_stats=s)
            for i, s in enumerate(stats)]


def ranking(router_class, candidates, **call_kwargs):
    router = router_class.__new__(router_class)  # choose_replicas reads only the candidates and the request
    request = SimpleNamespace(args=[], kwargs=call_kwargs)  # a PendingRequest's args and kwargs
    ranks = asyncio.run(router.choose_replicas(candidates, request))
    return [[r.name for r in rank] for rank in ranks]


def test_prefill_prefers_the_fewest_queued_prompt_tokens():
    candidates = replicas({"queued_prompt_tokens": 900}, {"queued_prompt_tokens": 12}, {}, {"queued_prompt_tokens": 300})
    assert ranking(LeastQueuedTokensRouter, candidates) == [["r1"], ["r3"], ["r0"], ["r2"]]


def test_prefill_ranks_a_replica_stuck_in_a_batch_last_whatever_its_queue():
    candidates = replicas({"queued_prompt_tokens": 0, "stuck_batch_s": 75.0}, {"queued_prompt_tokens": 900},
                          {"queued_prompt_tokens": 10, "stuck_batch_s": 0.0})
    assert ranking(LeastQueuedTokensRouter, candidates) == [["r2"], ["r1"], ["r0"]]


def test_decode_prefers_the_most_free_kv_among_replicas_that_can_admit():
    candidates = replicas(
        {"num_free_slots": 2, "num_waiting": 0},
        {"num_free_slots": 0, "num_waiting": 5},
        {"num_free_slots": 9, "num_waiting": 0},
        {"num_free_slots": 0, "num_waiting": 1},
        {},
    )
    assert ranking(MostFreeKVRouter, candidates) == [["r2"], ["r0"], ["r3"], ["r1"], ["r4"]]


def test_decode_ranks_a_replica_stuck_in_a_step_last_whatever_its_free_kv():
    candidates = replicas(
        {"num_free_slots": 16, "num_waiting": 0, "stuck_step_s": 75.0},
        {"num_free_slots": 0, "num_waiting": 3, "stuck_step_s": 0.0},
        {"num_free_slots": 1, "num_waiting": 0},
    )
    assert ranking(MostFreeKVRouter, candidates) == [["r2"], ["r1"], ["r0"]]


def test_decode_ranks_a_replica_held_by_a_slow_step_after_the_others():
    candidates = replicas(
        {"num_free_slots": 16, "num_waiting": 0, "held_step_s": 2.5, "stuck_step_s": 0.0},
        {"num_free_slots": 0, "num_waiting": 3, "held_step_s": 0.0},
        {"num_free_slots": 1, "num_waiting": 0},
    )
    assert ranking(MostFreeKVRouter, candidates) == [["r2"], ["r1"], ["r0"]]


def test_decode_ranks_the_replicas_a_request_names_as_refusing_last_whatever_their_stats():
    """A retry names the replicas that refused it (their stats may be 0.5 s old and still look best)."""
    candidates = replicas({"num_free_slots": 16, "num_waiting": 0}, {"num_free_slots": 1, "num_waiting": 0},
                          {"num_free_slots": 0, "num_waiting": 9, "held_step_s": 3.0})
    assert ranking(MostFreeKVRouter, candidates) == [["r0"], ["r1"], ["r2"]]
    assert ranking(MostFreeKVRouter, candidates, avoid_replicas=("r0",)) == [["r1"], ["r2"], ["r0"]]
    assert ranking(MostFreeKVRouter, candidates, avoid_replicas=("r0", "r1")) == [["r2"], ["r0"], ["r1"]]
    # With one replica, the one that refused is still offered: it is the pool's last choice.
    assert ranking(MostFreeKVRouter, replicas({"num_free_slots": 4}), avoid_replicas=("r0",)) == [["r0"]]

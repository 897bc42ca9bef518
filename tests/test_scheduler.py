"""The scheduler as a state machine: no model, no Ray, no event loop. Each test scripts steps with made-up tokens and
ends by checking that nothing is held (vLLM v1's `assert_scheduler_empty`)."""

import subprocess
import sys

import pytest

from overfill.engine.sampling_params import SamplingParams
from overfill.engine.scheduler import QueueFull, Request, Scheduler, SchedulerConfig, State
from overfill.engine.slots import SlotPool
from overfill.status import FinishReason, StatusCode

EOS = 2


def make(num_slots=4, max_seq_len=64, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(eos_token_ids=frozenset({EOS}), **config), SlotPool(num_slots, max_seq_len))


def prompt(rid, n=3, max_new_tokens=4, remote_decode=False) -> Request:
    return Request.to_prefill(rid, list(range(10, 10 + n)), SamplingParams(max_new_tokens=max_new_tokens), seed=7,
                              remote_decode=remote_decode)


def prefilled(rid, n=3, first_token=11, max_new_tokens=4) -> Request:
    return Request.prefilled(rid, n, first_token, SamplingParams(max_new_tokens=max_new_tokens), seed=7)


def step(scheduler, tokens=None, **update):
    """schedule() and update() with `tokens[request_id]` (default 5) for every row; returns (plan, events)."""
    plan = scheduler.schedule()
    tokens = tokens or {}
    events = scheduler.update(plan, [tokens.get(r.request_id, 5) for r in plan.rows], **update) if plan.rows else []
    return plan, events


def assert_nothing_held(scheduler: Scheduler) -> None:
    plan = scheduler.schedule()  # the boundary that gives back the last slots
    assert not plan.rows and not plan.load
    assert not scheduler.has_requests and scheduler.num_waiting == 0 and scheduler.num_slots_held == 0
    assert scheduler.pool.num_used == 0 and scheduler.pool.lengths == [0] * scheduler.pool.num_slots


def test_a_request_prefills_then_decodes_to_max_tokens_and_its_slot_is_given_back_at_the_next_boundary():
    scheduler = make()
    scheduler.add(prompt("a", max_new_tokens=3))
    plan, events = step(scheduler, {"a": 7})
    (row,) = plan.prefill
    assert (row.slot, row.token_ids, row.index, plan.decode) == (0, (10, 11, 12), 0, [])
    assert [(e.token_id, e.finish_reason) for e in events] == [(7, None)]
    plan, events = step(scheduler, {"a": 8})
    assert [(r.token_ids, r.index) for r in plan.decode] == [((7,), 1)] and not plan.prefill
    plan, events = step(scheduler, {"a": 9})
    assert [(r.token_ids, r.index) for r in plan.decode] == [((8,), 2)]
    assert [(e.token_id, e.finish_reason) for e in events] == [(9, FinishReason.LENGTH)] and events[0].ends
    assert scheduler.pool.num_used == 1 and scheduler.num_slots_held == 1  # held until the boundary
    assert scheduler.schedule().freed == [0]
    assert_nothing_held(scheduler)


def test_eos_and_a_caller_stop_end_a_request_with_stop():
    scheduler = make()
    for rid in ("eos", "stopped", "on"):
        scheduler.add(prompt(rid, max_new_tokens=10))
    _, events = step(scheduler, {"eos": EOS}, stopped={"stopped"})
    assert {e.request_id: e.finish_reason for e in events} == {"eos": FinishReason.STOP,
                                                              "stopped": FinishReason.STOP, "on": None}
    plan, _ = step(scheduler)
    assert [r.request_id for r in plan.decode] == ["on"] and plan.freed == [0, 1]
    scheduler.cancel("on")
    assert_nothing_held(scheduler)


def test_the_prefill_budget_splits_prompts_over_steps_but_always_runs_one():
    scheduler = make(max_prefill_tokens=8)
    for rid, n in (("a", 3), ("b", 4), ("c", 2), ("d", 20)):
        scheduler.add(prompt(rid, n=n, max_new_tokens=1))
    plans = [step(scheduler)[0] for _ in range(3)]
    assert [[r.request_id for r in p.prefill] for p in plans] == [["a", "b"], ["c"], ["d"]]  # d alone, over budget
    assert plans[1].freed == [0, 1] and plans[2].prefill[0].slot == 0  # slots reused lowest first
    assert_nothing_held(scheduler)


def test_admission_limits_count_what_would_wait_beyond_the_free_slots():
    scheduler = make(num_slots=2, max_waiting=1, max_waiting_tokens=10)
    for rid in ("a", "b", "c"):  # two would get the free slots, one waits
        scheduler.add(prompt(rid))
    with pytest.raises(QueueFull, match=r"queue is full \(3 requests waiting\)") as error:
        scheduler.add(prompt("d"))
    assert error.value.code is StatusCode.RESOURCE_EXHAUSTED
    tokens = make(max_waiting_tokens=10)
    tokens.add(prompt("x", n=9))
    with pytest.raises(QueueFull, match=r"\(9 prompt tokens waiting, 3 more exceed 10\)"):
        tokens.add(prompt("y", n=3))
    tokens.clear()
    step(scheduler)  # a and b hold the slots, c waits: no room for d
    with pytest.raises(QueueFull):
        scheduler.add(prompt("d"))
    scheduler.cancel("a")
    step(scheduler)  # the boundary gives a's slot to c
    scheduler.add(prompt("d"))
    assert scheduler.num_waiting == 1 and scheduler.num_running == 2
    scheduler.clear()
    assert_nothing_held(scheduler)


def test_requests_that_cannot_fit_or_repeat_an_id_are_refused_by_field():
    scheduler = make(max_seq_len=8)
    with pytest.raises(ValueError, match="needs 9 KV positions"):
        scheduler.add(prompt("long", n=6, max_new_tokens=4))
    scheduler.add(prompt("fits", n=6, max_new_tokens=3))  # 6 + 3 - 1: the last token is never fed back
    with pytest.raises(ValueError, match="'fits' is already in flight"):
        scheduler.add(prompt("fits"))
    with pytest.raises(ValueError, match="prompt is empty"):
        Request.to_prefill("empty", [], SamplingParams(), seed=1)
    for name, value in (("max_waiting", -1), ("max_prefill_tokens", 0), ("max_waiting_tokens", 1.5)):
        with pytest.raises(ValueError, match=name):
            SchedulerConfig(**{name: value})
    scheduler.clear()
    assert_nothing_held(scheduler)


def test_cancel_while_waiting_mid_step_and_between_steps():
    scheduler = make(num_slots=2)
    for rid in ("a", "b", "c"):
        scheduler.add(prompt(rid, max_new_tokens=10))
    assert scheduler.cancel("c") and scheduler.state_of("c") is None  # waiting: gone at once
    plan = scheduler.schedule()
    assert scheduler.cancel("a")  # mid-step: its token is dropped when the step ends, its slot kept until then
    assert scheduler.state_of("a") is State.PREFILL and scheduler.pool.num_used == 2
    events = scheduler.update(plan, [5, 6])
    assert [e.request_id for e in events] == ["b"]
    with pytest.raises(RuntimeError, match="in flight"):
        scheduler.update(plan, [5, 6])
    plan = scheduler.schedule()
    assert plan.freed == [0] and [r.request_id for r in plan.decode] == ["b"]
    scheduler.update(plan, [7])
    assert scheduler.cancel("b") and not scheduler.cancel("b")  # between steps; twice is a no-op
    assert scheduler.num_slots_held == 1 and scheduler.pool.num_used == 1  # given back at the next boundary
    assert_nothing_held(scheduler)


def test_schedule_refuses_to_plan_over_a_step_in_flight():
    scheduler = make()
    scheduler.add(prompt("a"))
    plan = scheduler.schedule()
    with pytest.raises(RuntimeError, match="previous plan is in flight"):
        scheduler.schedule()
    scheduler.update(plan, [5])
    scheduler.clear()
    assert_nothing_held(scheduler)


def test_a_freed_slot_is_reused_by_the_next_waiting_request():
    scheduler = make(num_slots=1)
    scheduler.add(prompt("first", max_new_tokens=2))
    scheduler.add(prompt("second", max_new_tokens=1))
    assert step(scheduler)[0].prefill[0].slot == 0
    plan, events = step(scheduler)
    assert [r.request_id for r in plan.rows] == ["first"] and events[0].finish_reason is FinishReason.LENGTH
    plan, events = step(scheduler)  # the boundary gives slot 0 back and admits the waiting request into it
    assert plan.freed == [0] and [(r.request_id, r.slot) for r in plan.prefill] == [("second", 0)]
    assert events[0].finish_reason is FinishReason.LENGTH
    assert_nothing_held(scheduler)


def test_non_finite_logits_fail_only_their_request():
    scheduler = make()
    scheduler.add(prompt("bad"))
    scheduler.add(prompt("good", max_new_tokens=2))
    plan = scheduler.schedule()
    events = scheduler.update(plan, [None, 4])
    assert (events[0].request_id, events[0].status, events[0].token_id) == ("bad", StatusCode.INTERNAL, None)
    assert "non-finite" in events[0].message and events[1].token_id == 4
    plan, events = step(scheduler)
    assert [r.request_id for r in plan.decode] == ["good"] and events[0].finish_reason is FinishReason.LENGTH
    assert_nothing_held(scheduler)


def test_a_failed_step_fails_its_live_requests_and_keeps_their_slots_to_the_next_boundary():
    scheduler = make()
    for rid in ("a", "b"):
        scheduler.add(prompt(rid))
    step(scheduler)
    plan = scheduler.schedule()
    scheduler.cancel("b")
    events = scheduler.fail_step(plan, StatusCode.DEADLINE_EXCEEDED, "the step ran past decode.max_step_s")
    assert [(e.request_id, e.status) for e in events] == [("a", StatusCode.DEADLINE_EXCEEDED)]
    assert scheduler.pool.num_used == 2  # the model may still be running the step: nothing given back yet
    assert sorted(scheduler.schedule().freed) == [0, 1]
    assert_nothing_held(scheduler)


def test_prefilled_requests_load_their_kv_then_decode_from_their_second_token():
    scheduler = make(num_slots=1, max_waiting=1)
    scheduler.add(prefilled("a", first_token=11, max_new_tokens=3))
    assert [(load.request_id, load.slot) for load in scheduler.admit()] == [("a", 0)]  # between boundaries
    scheduler.add(prefilled("b"))  # no free slot: it waits
    with pytest.raises(QueueFull):
        scheduler.add(prefilled("c"))
    assert scheduler.admit() == [] and scheduler.num_waiting == 1
    assert scheduler.schedule().rows == []  # loading: not decoded yet
    scheduler.loaded("a")
    with pytest.raises(ValueError, match="running, not loading"):
        scheduler.loaded("a")
    plan, events = step(scheduler, {"a": 12})
    assert [(r.token_ids, r.index) for r in plan.decode] == [((11,), 1)]
    plan, events = step(scheduler, {"a": 13})
    assert events[0].finish_reason is FinishReason.LENGTH  # 11 (prefill's), 12, 13
    plan = scheduler.schedule()
    assert plan.freed == [0] and [(load.request_id, load.slot) for load in plan.load] == [("b", 0)]
    assert scheduler.cancel("b")  # cancelled while its KV loads: given back at the next boundary
    assert_nothing_held(scheduler)


def test_remote_decode_requests_hand_off_after_their_first_token():
    scheduler = make()
    scheduler.add(prompt("handoff", max_new_tokens=8, remote_decode=True))
    scheduler.add(prompt("done", max_new_tokens=1, remote_decode=True))
    scheduler.add(prompt("eos", max_new_tokens=8, remote_decode=True))
    _, events = step(scheduler, {"eos": EOS})
    assert [(e.request_id, e.handoff, e.finish_reason) for e in events] == [
        ("handoff", True, None), ("done", False, FinishReason.LENGTH), ("eos", False, FinishReason.STOP)]
    assert all(e.ends for e in events)
    assert_nothing_held(scheduler)


def test_decode_rows_keep_arrival_order_and_carry_each_requests_seed():
    scheduler = make()
    for rid, seed in (("x", 3), ("y", 1), ("z", 2)):
        scheduler.add(Request.to_prefill(rid, [1, 2], SamplingParams(temperature=1.0, max_new_tokens=5), seed))
    step(scheduler)
    scheduler.cancel("y")
    plan, _ = step(scheduler)
    assert [(r.request_id, r.seed, r.index) for r in plan.decode] == [("x", 3, 1), ("z", 2, 1)]
    scheduler.clear()
    assert_nothing_held(scheduler)


def test_the_scheduler_imports_no_torch_and_no_asyncio():
    code = ("import sys, overfill.engine.scheduler; "
            "assert not {'torch', 'asyncio'} & set(sys.modules), sorted({'torch', 'asyncio'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)

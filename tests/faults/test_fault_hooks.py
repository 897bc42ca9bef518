"""The chaos hooks and the failure paths they reach, without Ray: fault plans, a stalled decode step past
decode.max_step_s, a KV pull that starts after its lease expired, a KV connection dropped mid-transfer. Every test
ends with nothing held (slots, leases)."""

import asyncio
import time

import pytest
import torch

from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
from overfill.serving.faults import FAULTS_METADATA_KEY, FaultPlan, plan_from_metadata
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.types import PrefillRequest, ServiceError
from overfill.transport.base import KVTransferError, make_receiver, make_sender
from overfill.transport.wire import KVLayout
from tests.tiny import tiny_model

EOS = -1  # never sampled: every request runs to max_tokens


# ---- plans ---------------------------------------------------------------------------------------------------------

def test_fault_plan_parses_and_refuses_with_the_fault_named():
    plan = FaultPlan.parse("stall_after_tokens=3, stall_step_s=2.5,drop_pull_after_chunks=0")
    assert plan == FaultPlan(stall_after_tokens=3, stall_step_s=2.5, drop_pull_after_chunks=0)
    assert plan.stall_for(3) == 2.5 and plan.stall_for(2) == 0.0
    assert plan.after_migration().stall_for(3) == 0.0  # stall_replicas=1: the next replica is spared
    assert FaultPlan.parse("stall_after_tokens=1,stall_step_s=1,stall_replicas=2").after_migration().stall_for(1) == 1
    for text, named in [("explode=1", "unknown fault 'explode'"), ("stall_step_s=x", "stall_step_s must be a number"),
                        ("stall_after_tokens=1.5", "stall_after_tokens must be an integer"),
                        ("delay_pull_s=-1", "delay_pull_s must be a finite number >= 0"),
                        ("delay_pull_s=nan", "delay_pull_s must be a finite number >= 0")]:
        with pytest.raises(ServiceError) as error:
            FaultPlan.parse(text)
        assert error.value.code == "INVALID_ARGUMENT" and FAULTS_METADATA_KEY in error.value.message
        assert named in error.value.message


def test_plans_are_ignored_unless_faults_are_enabled():
    metadata = [(FAULTS_METADATA_KEY, "stall_after_tokens=1,stall_step_s=9"), ("other", "x")]
    assert plan_from_metadata(metadata, enabled=False) is None
    assert plan_from_metadata([("other", "x")], enabled=True) is None
    assert plan_from_metadata(metadata, enabled=True) == FaultPlan(stall_after_tokens=1, stall_step_s=9.0)


# ---- workers -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runner():
    return ModelRunner(tiny_model("llama"))


def workers(runner, lease_ttl_s=30.0, max_step_s=60.0):
    sender, receiver = make_sender("inprocess", lease_ttl_s=lease_ttl_s), make_receiver("inprocess")
    prefill = PrefillWorker(runner, sender, {EOS}, PrefillSettings(max_seq_len=128, max_batch_size=4))
    decode = DecodeWorker(runner, receiver, {EOS}, DecodeSettings(num_slots=2, max_seq_len=128, max_step_s=max_step_s))
    return prefill, decode, sender


async def collect(decode, result, sampling, faults=None) -> list[int]:
    return [t async for chunk in decode.generate(result, sampling, faults) for t in chunk.token_ids]


async def wait_until(condition, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return condition()


def test_a_stalled_step_fails_its_requests_at_max_step_s_and_frees_them_when_it_returns(runner):
    prefill, decode, sender = workers(runner, max_step_s=0.3)
    sampling = SamplingParams(max_new_tokens=12)
    stall = FaultPlan(stall_after_tokens=3, stall_step_s=1.2)

    async def run():
        stalled, bystander = [await prefill.prefill(PrefillRequest(rid, [5, 6, 7, 8], sampling))
                              for rid in ("stalled-1", "bystander-1")]
        seen, started = [], time.monotonic()
        with pytest.raises(ServiceError) as error:
            async for chunk in decode.generate(stalled, sampling, stall):
                seen += chunk.token_ids
        failed_after = time.monotonic() - started
        assert error.value.code == "DEADLINE_EXCEEDED" and "'stalled-1'" in error.value.message
        assert "decode.max_step_s = 0.3 s" in error.value.message
        assert len(seen) == 2 and failed_after < 1.0  # first token from prefill + one step, then the stall
        assert decode.stats()["num_free_slots"] == 1  # the model thread still holds the slot ...
        assert await wait_until(lambda: decode.stats()["num_free_slots"] == 2)  # ... until the step returns
        assert time.monotonic() - started >= 1.2
        # The replica serves on, the same tokens as without the fault.
        tokens = [bystander.first_token] + await collect(decode, bystander, sampling)
        assert tokens == await two_stage(prefill, decode, "again-1", sampling)

    asyncio.run(run())
    assert sender.num_leases == 0 and decode.stats()["num_free_slots"] == 2
    prefill.close(), decode.close()


async def two_stage(prefill, decode, rid, sampling) -> list[int]:
    result = await prefill.prefill(PrefillRequest(rid, [5, 6, 7, 8], sampling))
    return [result.first_token] + await collect(decode, result, sampling)


def test_a_pull_that_starts_after_the_lease_expired_is_aborted(runner):
    prefill, decode, sender = workers(runner, lease_ttl_s=0.2)

    async def run():
        sampling = SamplingParams(max_new_tokens=4)
        result = await prefill.prefill(PrefillRequest("late-1", [5, 6, 7], sampling))
        with pytest.raises(ServiceError) as error:
            await collect(decode, result, sampling, FaultPlan(delay_pull_s=0.4))
        assert error.value.code == "ABORTED" and "'late-1'" in error.value.message
        assert "no longer leased" in error.value.message

    asyncio.run(run())
    assert sender.num_leases == 0 and sender.leases.num_expired == 1 and decode.stats()["num_free_slots"] == 2
    prefill.close(), decode.close()


def test_a_kv_connection_cut_mid_transfer_is_unavailable_and_the_lease_stays_releasable():
    generator = torch.Generator().manual_seed(0)
    k, v = (torch.randn(3, 2, 20, 16, generator=generator) for _ in range(2))
    sender = make_sender("grpc", secret="s", chunk_bytes=1024)
    receiver = make_receiver("grpc", secret="s")
    try:
        ticket = sender.publish("cut-1", k, v)
        sender.cut_pull_after("cut-1", 2)
        expected = KVLayout.of(k)
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, expected)
        assert error.value.code == "UNAVAILABLE" and "dropped mid-transfer" in str(error.value)
        assert sender.num_leases == 1  # nothing was acknowledged: the lease waits for its release (or expiry)
        k2, v2 = receiver.pull(ticket, expected)  # the cut was one-shot
        assert torch.equal(k2, k) and torch.equal(v2, v)
        assert receiver.release(ticket) and sender.num_leases == 0
    finally:
        receiver.close()
        sender.close()


# ---- graceful shutdown ---------------------------------------------------------------------------------------------

def test_a_stopping_prefill_replica_serves_the_tickets_it_handed_out_then_stops(tmp_path):
    from overfill.serving.config import load_config
    from services.prefill.server import PrefillServer
    from tests.tiny import save_tiny

    config = load_config(None, [f"models.full={save_tiny(tmp_path / 'full')}"]).with_secret()
    server = PrefillServer(config)  # what Ray Serve runs, here without Ray: its destructor is what Serve awaits
    receiver = make_receiver("grpc", secret=config.kv.secret)

    async def run():
        result = await server.prefill(PrefillRequest("drain-1", [5, 6, 7], SamplingParams(max_new_tokens=8)))
        stopping = asyncio.create_task(asyncio.to_thread(server.__del__))  # Serve stops it: no call left, a lease
        await asyncio.sleep(0.5)
        assert not stopping.done()
        k, v = await asyncio.to_thread(receiver.pull, result.ticket, result.ticket.layout)  # still served
        assert k.shape[2] == 3 and await asyncio.to_thread(receiver.release, result.ticket)
        await asyncio.wait_for(stopping, 2.0)  # the last lease acknowledged: the replica stops
        with pytest.raises(KVTransferError) as error:
            await asyncio.to_thread(receiver.release, result.ticket)
        assert error.value.code == "UNAVAILABLE"  # its KV service is closed

    try:
        asyncio.run(run())
    finally:
        receiver.close()

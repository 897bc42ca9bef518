"""Fault injection without Ray: the wrappers of tests/faults/chaos.py around the production workers and transport (a
stalled decode step past decode.max_step_s, a KV pull that starts after its lease expired, a KV connection dropped
mid-transfer), and that production code carries no fault hook. Every test ends with nothing held (slots, leases)."""

import ast
import asyncio
import time
from pathlib import Path

import pytest
import torch

from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.serving.config import ConfigError, load_config
from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.types import PrefillRequest, ServiceError
from overfill.transport.base import KVTransferError, make_receiver, make_sender
from overfill.transport.wire import KVLayout
from tests.faults.chaos import CuttingKVProxy, FaultPlan, install_decode_faults
from tests.tiny import tiny_model

EOS = -1  # never sampled: every request runs to max_tokens
ROOT = Path(__file__).resolve().parents[2]


# ---- production code has no fault hook -----------------------------------------------------------------------------

def test_no_production_function_takes_a_fault_plan_and_no_config_or_request_turns_faults_on():
    hooked = []
    for path in sorted([*(ROOT / "overfill").rglob("*.py"), *(ROOT / "services").rglob("*.py")]):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
                hooked += [f"{path.relative_to(ROOT)}:{node.name}({n})" for n in names
                           if {"fault", "faults", "chaos"} & set(n.split("_"))]
        if "x-overfill-faults" in source or "FaultPlan" in source:
            hooked.append(str(path.relative_to(ROOT)))
    assert hooked == []
    with pytest.raises(ConfigError, match="unknown field faults"):
        load_config(None, ["faults.enabled=true"])


def test_a_fault_plan_stalls_the_step_after_its_nth_token_on_as_many_replicas_as_it_says():
    plan = FaultPlan(stall_after_tokens=3, stall_step_s=2.5)
    assert plan.stall_for(3) == 2.5 and plan.stall_for(2) == 0.0
    assert FaultPlan(stall_after_tokens=3, stall_step_s=2.5, stall_replicas=0).stall_for(3) == 0.0


# ---- workers -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runner():
    return ModelRunner(tiny_model("llama"))


def workers(runner, lease_ttl_s=30.0, max_step_s=60.0):
    sender, receiver = make_sender("inprocess", lease_ttl_s=lease_ttl_s), make_receiver("inprocess")
    prefill = PrefillWorker(runner, sender, {EOS}, PrefillSettings(max_seq_len=128, max_batch_size=4))
    decode = DecodeWorker(runner, receiver, {EOS}, DecodeSettings(num_slots=2, max_seq_len=128, max_step_s=max_step_s))
    return prefill, decode, sender


async def collect(decode, result, sampling) -> list[int]:
    return [t async for chunk in decode.generate(result, sampling) for t in chunk.token_ids]


def with_faults(decode, plans: dict[str, FaultPlan]) -> list[str]:
    """The chaos wrappers on a decode worker, plans by lease id; returns the lease ids a step stalled for."""
    stalled = []

    async def plan_of(lease_id):
        return plans.get(lease_id)

    install_decode_faults(decode, plan_of, stalled.append)
    return stalled


async def wait_until(condition, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return condition()


def test_a_stalled_step_fails_its_requests_at_max_step_s_and_frees_them_when_it_returns(runner):
    prefill, decode, sender = workers(runner, max_step_s=0.3)
    sampling = SamplingParams(max_new_tokens=12)
    stalled_for = with_faults(decode, {"stalled-1": FaultPlan(stall_after_tokens=3, stall_step_s=1.2)})

    async def run():
        stalled, bystander = [await prefill.prefill(PrefillRequest(rid, [5, 6, 7, 8], sampling))
                              for rid in ("stalled-1", "bystander-1")]
        seen, started = [], time.monotonic()
        with pytest.raises(ServiceError) as error:
            async for chunk in decode.generate(stalled, sampling):
                seen += chunk.token_ids
        failed_after = time.monotonic() - started
        assert error.value.code == "DEADLINE_EXCEEDED" and "'stalled-1'" in error.value.message
        assert "decode.max_step_s = 0.3 s" in error.value.message
        assert len(seen) == 2 and failed_after < 1.0  # first token from prefill + one step, then the stall
        assert stalled_for == ["stalled-1"]
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
    with_faults(decode, {"late-1": FaultPlan(delay_pull_s=0.4)})

    async def run():
        sampling = SamplingParams(max_new_tokens=4)
        result = await prefill.prefill(PrefillRequest("late-1", [5, 6, 7], sampling))
        with pytest.raises(ServiceError) as error:
            await collect(decode, result, sampling)
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
    proxy = CuttingKVProxy(sender.address)  # a failing transport in front of the KV service
    sender.address = proxy.address         # what tickets name, as the chaos prefill server does
    try:
        ticket = sender.publish("cut-1", k, v)
        proxy.cut_after("cut-1", 2)
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
        proxy.close()
        sender.close()


# ---- graceful shutdown ---------------------------------------------------------------------------------------------

def test_a_stopping_prefill_replica_serves_the_tickets_it_handed_out_then_stops(service_models):
    from overfill.serving.config import load_config
    from services.prefill.server import PrefillServer

    full_dir, decoder_dir = service_models  # a prefill replica checks the decoder it serves with
    config = load_config(None, [f"models.full={full_dir}", f"models.decoder={decoder_dir}"]).with_secret()
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

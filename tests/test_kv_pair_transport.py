"""KV transport over a 2-rank process group per replica pair (`gloo` here; `nccl` is the same code on GPUs):
bit-exact KV, one cached group per pair under concurrent transfers, precise errors, and failures (a peer that dies
mid-transfer, a transfer that times out) that fail the request with UNAVAILABLE, free the lease and leave a pair that
the next transfer rebuilds."""

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

from overfill.transport.base import KVTransferError, make_receiver, make_sender
from overfill.transport.pair_group import PairGroup, PairGroupError, StoreHost, connect_store
from overfill.transport.wire import KVLayout
from tests import pair_peers
from tests.test_kv_transport import random_kv

SECRET = "pair-secret"
TIMEOUT_S = 10.0


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def expected_of(k: torch.Tensor) -> KVLayout:
    return replace(KVLayout.of(k), num_tokens=0)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.fixture
def gloo_pair():
    sender = make_sender("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S)
    receiver = make_receiver("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S)
    yield sender, receiver
    receiver.close()
    sender.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gloo_pull_is_bit_exact_and_the_group_is_cached(gloo_pair, dtype):
    sender, receiver = gloo_pair
    for index in range(3):
        k, v = random_kv(dtype, layers=4, heads=3, tokens=50 + index, head_dim=16, seed=index)
        ticket = sender.publish(f"req-{index}", k, v)
        k2, v2 = receiver.pull(ticket, expected_of(k))
        assert same_bits(k2, k) and same_bits(v2, v)
        assert sender.num_leases == 1  # held until the receiver acknowledges, as with grpc
        assert receiver.release(ticket) is True and sender.num_leases == 0
    stats = receiver.stats()
    assert stats["kv_groups_opened"] == 1 and stats["kv_transfers"] == 3 and stats["kv_groups"] == 1
    assert sender.num_pairs == 1


def test_concurrent_transfers_over_one_pair(gloo_pair):
    sender, receiver = gloo_pair
    kvs = [random_kv(torch.bfloat16, layers=3, heads=2, tokens=200 + 17 * i, head_dim=32, seed=i) for i in range(8)]
    tickets = [sender.publish(f"c-{i}", k, v) for i, (k, v) in enumerate(kvs)]

    def pull(index):
        k, v = receiver.pull(tickets[index], expected_of(kvs[index][0]))
        receiver.release(tickets[index])
        return k, v

    with ThreadPoolExecutor(4) as pool:  # as the decode replica's pull threads
        pulled = list(pool.map(pull, range(8)))
    assert all(same_bits(k2, k) and same_bits(v2, v) for (k2, v2), (k, v) in zip(pulled, kvs))
    assert receiver.stats()["kv_groups_opened"] == 1 and sender.num_pairs == 1
    assert sender.num_leases == 0


def test_errors_have_precise_codes_and_leave_the_pair_usable(gloo_pair):
    sender, receiver = gloo_pair
    k, v = random_kv()
    ticket = sender.publish("req", k, v)

    intruder = make_receiver("gloo", secret="wrong", transfer_timeout_s=TIMEOUT_S)
    with pytest.raises(KVTransferError) as error:
        intruder.pull(ticket, expected_of(k))
    assert error.value.code == "UNAUTHENTICATED" and sender.num_pairs == 0
    intruder.close()

    with pytest.raises(KVTransferError) as error:
        receiver.pull(ticket, replace(expected_of(k), dtype="bfloat16"))
    assert error.value.code == "FAILED_PRECONDITION" and "dtype" in str(error.value)
    with pytest.raises(KVTransferError) as error:
        receiver.pull(replace(ticket, request_id="nobody"), expected_of(k))
    assert error.value.code == "NOT_FOUND"
    k2, v2 = receiver.pull(ticket, expected_of(k))  # refused requests sent nothing: the group is still in step
    assert same_bits(k2, k) and same_bits(v2, v) and receiver.stats()["kv_groups_opened"] == 1

    other = make_receiver("nccl", secret=SECRET, transfer_timeout_s=TIMEOUT_S)  # a decode pool configured apart
    with pytest.raises(KVTransferError) as error:
        other.pull(ticket, expected_of(k))
    assert error.value.code == "FAILED_PRECONDITION" and "'gloo'" in str(error.value) and "'nccl'" in str(error.value)
    other.close()


def test_a_timed_out_transfer_is_unavailable_frees_the_lease_and_the_next_one_rebuilds_the_group(monkeypatch):
    sender = make_sender("gloo", secret=SECRET, transfer_timeout_s=1.0)
    receiver = make_receiver("gloo", secret=SECRET, transfer_timeout_s=1.0)
    stalled, resume = threading.Event(), threading.Event()
    original_send = PairGroup.send

    def stalling_send(group, k, v, ready=None):
        if not stalled.is_set():  # the first send waits past the receiver's timeout (a stuck link)
            stalled.set()
            resume.wait(10)
        return original_send(group, k, v, ready)

    monkeypatch.setattr(PairGroup, "send", stalling_send)
    try:
        k, v = random_kv(seed=1)
        ticket = sender.publish("slow", k, v)
        start = time.monotonic()
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, expected_of(k), timeout_s=5.0)
        assert error.value.code == "UNAVAILABLE" and time.monotonic() - start < 3.0
        assert sender.num_leases == 0  # freed by the receiver on failure
        # The prefill side is not blocked meanwhile: publishing does not wait for the stuck send.
        start = time.monotonic()
        k3, v3 = random_kv(seed=3)
        ticket3 = sender.publish("during-stall", k3, v3)
        assert time.monotonic() - start < 0.5
        resume.set()
        assert wait_for(lambda: sender.num_failed_transfers == 1 and sender.num_pairs == 0, 5.0)
        stats = receiver.stats()
        assert stats["kv_groups"] == 0 and stats["kv_failed_transfers"] == 1
        # The next transfer opens a new group and is bit-exact.
        k2, v2 = random_kv(torch.bfloat16, seed=2)
        for ticket_, (k_, v_) in ((sender.publish("next", k2, v2), (k2, v2)), (ticket3, (k3, v3))):
            pulled = receiver.pull(ticket_, expected_of(k_))
            assert same_bits(pulled[0], k_) and same_bits(pulled[1], v_) and receiver.release(ticket_)
        assert receiver.stats()["kv_groups_opened"] == 2 and sender.num_pairs == 1 and sender.num_leases == 0
    finally:
        resume.set()
        receiver.close()
        sender.close()


# ---- peers that die mid-transfer (separate processes that exit between K and V: tests/pair_peers.py) ----------------


def test_a_sender_that_dies_mid_transfer_fails_the_pull_with_unavailable_in_time():
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=pair_peers.dying_sender, args=(SECRET, TIMEOUT_S, child), daemon=True)
    process.start()
    receiver = make_receiver("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S)
    try:
        assert parent.poll(60), "the sender process did not start"
        ticket = parent.recv()
        start = time.monotonic()
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, KVLayout(4, 2, 32, "float32", 0))
        assert error.value.code == "UNAVAILABLE" and time.monotonic() - start < TIMEOUT_S
        process.join(10)
        assert process.exitcode == pair_peers.DIED_MID_TRANSFER  # between K and V, as arranged
        assert receiver.stats()["kv_groups"] == 0 and receiver.stats()["kv_failed_transfers"] == 1
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()


def test_a_receiver_that_dies_mid_transfer_frees_the_lease_and_the_sender_keeps_serving():
    sender = make_sender("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S)
    try:
        k, v = pair_peers.random_kv()
        ticket = sender.publish("abandoned", k, v)
        process = multiprocessing.get_context("spawn").Process(target=pair_peers.dying_receiver,
                                                               args=(SECRET, TIMEOUT_S, ticket, expected_of(k)))
        process.start()
        process.join(60)
        assert process.exitcode == pair_peers.DIED_MID_TRANSFER
        assert wait_for(lambda: sender.num_failed_transfers == 1 and sender.num_leases == 0, TIMEOUT_S)
        assert sender.num_pairs == 0
        # A new decode replica pairs with the same prefill replica and pulls bit-exact KV.
        receiver = make_receiver("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S)
        k2, v2 = random_kv(torch.bfloat16, seed=5)
        ticket2 = sender.publish("after", k2, v2)
        pulled = receiver.pull(ticket2, expected_of(k2))
        assert same_bits(pulled[0], k2) and same_bits(pulled[1], v2) and receiver.release(ticket2)
        assert sender.num_pairs == 1 and sender.num_leases == 0
        receiver.close()
    finally:
        sender.close()


def test_nccl_without_cuda_is_refused_with_the_reason():
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        pytest.skip("this machine has NCCL and CUDA; the GPU test covers it")
    sender = make_sender("nccl", secret=SECRET, transfer_timeout_s=2.0)
    receiver = make_receiver("nccl", secret=SECRET, transfer_timeout_s=2.0)
    try:
        k, v = random_kv()
        ticket = sender.publish("gpu-only", k, v)
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, expected_of(k))
        assert error.value.code == "UNAVAILABLE" and ("NCCL" in str(error.value) or "CUDA" in str(error.value))
    finally:
        receiver.close()
        sender.close()


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2
                    or not torch.distributed.is_nccl_available(), reason="needs NCCL and two CUDA GPUs")
def test_nccl_pull_between_two_gpus_is_bit_exact():
    sender = make_sender("nccl", secret=SECRET, device="cuda:0", transfer_timeout_s=TIMEOUT_S)
    receiver = make_receiver("nccl", secret=SECRET, device="cuda:1", transfer_timeout_s=TIMEOUT_S)
    try:
        for dtype in (torch.bfloat16, torch.float32):
            k, v = (t.to("cuda:0") for t in random_kv(dtype, layers=4, heads=8, tokens=512, head_dim=128))
            ticket = sender.publish(f"gpu-{dtype}", k, v)
            k2, v2 = receiver.pull(ticket, expected_of(k))
            assert k2.device == torch.device("cuda:1")
            assert same_bits(k2.cpu(), k.cpu()) and same_bits(v2.cpu(), v.cpu()) and receiver.release(ticket)
        assert receiver.stats()["kv_groups_opened"] == 1
    finally:
        receiver.close()
        sender.close()


def test_bench_transfer_over_gloo_is_bit_exact_and_reports_against_the_link():
    from overfill.bench.transfer import TransferBenchSpec, format_report, run_transfer_bench

    result = run_transfer_bench(TransferBenchSpec(transport="gloo", sizes_mb=[0.25, 1], repeats=1), progress=False)
    assert [round(r["size_mb"], 1) for r in result["rows"]] == [0.2, 1.0]  # whole tokens: 5 and 22 of 46 KB
    assert all(r["pull_gb_s"] > 0 and r["memcpy_gb_s"] > 0 and r["pull_ms"] > 0 for r in result["rows"])
    assert result["spec"]["link"] == "torch.clone on the host (memcpy)" and "pull/link" in format_report(result)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="needs two CUDA GPUs"):
            run_transfer_bench(TransferBenchSpec(transport="nccl", sizes_mb=[1]), progress=False)


def test_an_idle_pair_is_closed_and_the_next_pull_reopens_it_transparently():
    sender = make_sender("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S, pair_idle_s=0.3)
    receiver = make_receiver("gloo", secret=SECRET, transfer_timeout_s=TIMEOUT_S)
    try:
        for index in range(2):
            if index:
                assert wait_for(lambda: sender.num_pairs == 0, 5.0)  # closed on the prefill side, not yet here
                assert receiver.stats()["kv_groups"] == 1
            k, v = random_kv(seed=index)
            ticket = sender.publish(f"idle-{index}", k, v)
            k2, v2 = receiver.pull(ticket, expected_of(k))  # the second pull gets ABORTED, reopens, succeeds
            assert same_bits(k2, k) and same_bits(v2, v) and receiver.release(ticket)
        stats = receiver.stats()
        assert stats["kv_groups_opened"] == 2 and stats["kv_failed_transfers"] == 0 and sender.num_leases == 0
    finally:
        receiver.close()
        sender.close()


@pytest.mark.parametrize("intruder_secret", [SECRET, "a-guess", ""])
def test_a_peer_joining_the_rendezvous_without_the_secret_gets_no_group(intruder_secret):
    """Anyone who reaches the TCPStore can read a group id and join as rank 1; the handshake then fails on both
    sides (no KV moves) unless the joiner holds the secret."""
    host = StoreHost("127.0.0.1", TIMEOUT_S)
    group_id = "0123456789abcdef" * 2
    outcomes = {}

    def join(rank, secret, store):
        try:
            group = PairGroup("gloo", store, group_id, rank, "127.0.0.1", TIMEOUT_S, secret)
            outcomes[rank] = "joined"
            group.close()
        except PairGroupError as e:
            outcomes[rank] = str(e)

    threads = [threading.Thread(target=join, args=(0, SECRET, host.store)),
               threading.Thread(target=join, args=(1, intruder_secret, connect_store(host.address, TIMEOUT_S)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT_S)
    if intruder_secret == SECRET:
        assert outcomes == {0: "joined", 1: "joined"}
    else:
        assert "as rank 1 does not hold the KV secret" in outcomes[0]
        assert "as rank 0 does not hold the KV secret" in outcomes[1]
    host.close()

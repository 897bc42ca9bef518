"""KV transfer: wire format, leases, and the gRPC KV service (bit-exact, secret, errors, multi-chunk)."""

import pytest
import torch

from overfill.status import StatusCode
from overfill.transport.base import KVTransferError, make_receiver, make_sender
from overfill.transport.leases import LeaseTable
from overfill.transport.wire import KEY, Chunk, KVAssembler, KVLayout, KVWireError, encode_chunks

SECRET = "test-secret"


def random_kv(dtype=torch.float32, layers=3, heads=2, tokens=37, head_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (layers, heads, tokens, head_dim)
    return (torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype))


def assemble(chunks, layout, expected=None):
    assembler = KVAssembler(expected, layout, layout.total_bytes)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_wire_round_trip_is_bit_exact(dtype):
    k, v = random_kv(dtype)
    layout = KVLayout.of(k)
    chunks = list(encode_chunks(k, v, chunk_bytes=100))  # chunks span layers; the last of each tensor is short
    assert all(len(c.data) <= 100 for c in chunks) and len(chunks) == 2 * -(-KVLayout.of(k).tensor_bytes // 100)
    k2, v2 = assemble(reversed(chunks), layout)  # order does not matter
    assert torch.equal(k2.view(torch.uint8), k.view(torch.uint8)) and torch.equal(v2.view(torch.uint8), v.view(torch.uint8))


def test_assembler_refuses_wrong_geometry_dtype_and_sizes():
    k, v = random_kv()
    layout = KVLayout.of(k)
    with pytest.raises(KVWireError, match="num_kv_heads=2, expected 4"):
        KVAssembler(KVLayout(3, 4, 16, "float32", 0), layout, layout.total_bytes)
    with pytest.raises(KVWireError, match="dtype='float32', expected 'bfloat16'"):
        KVAssembler(KVLayout(3, 2, 16, "bfloat16", 0), layout, layout.total_bytes)
    with pytest.raises(KVWireError, match="total_bytes"):
        KVAssembler(None, layout, layout.total_bytes + 4)
    with pytest.raises(KVWireError, match="dtype 'int8'"):
        bad = KVLayout(3, 2, 16, "int8", 37)
        KVAssembler(None, bad, 0)


def test_assembler_refuses_truncated_overlapping_and_stray_chunks():
    k, v = random_kv()
    layout = KVLayout.of(k)
    chunks = list(encode_chunks(k, v, chunk_bytes=256))
    with pytest.raises(KVWireError, match="ended after"):
        assemble(chunks[:-1], layout)
    assembler = KVAssembler(None, layout, layout.total_bytes)
    assembler.add(chunks[0])
    with pytest.raises(KVWireError, match="overlaps"):
        assembler.add(Chunk(chunks[0].kind, 8, bytes(16)))
    with pytest.raises(KVWireError, match="neither key"):
        assembler.add(Chunk(7, 0, bytes(4)))
    with pytest.raises(KVWireError, match="outside"):
        assembler.add(Chunk(KEY, layout.tensor_bytes - 2, bytes(4)))


def test_leases_expire_and_are_counted():
    now = [100.0]
    leases = LeaseTable(ttl_s=3.0, clock=lambda: now[0])
    k, v = random_kv()
    leases.put("a", k, v)
    leases.put("b", k, v)
    assert leases.num_bytes == 2 * KVLayout.of(k).total_bytes
    assert leases.release("a") and not leases.release("a")
    with pytest.raises(KeyError):
        leases.put("b", k, v)
    now[0] = 102.9
    assert leases.expire() == 0 and leases.get("b") is not None
    now[0] = 103.0
    assert leases.get("b") is None  # reading an expired lease frees it too
    assert len(leases) == 0 and leases.num_bytes == 0
    assert leases.num_expired == 1 and leases.num_released == 1
    leases.put("c", k, v)
    now[0] = 200.0
    assert leases.expire() == 1 and leases.num_expired == 2


@pytest.fixture
def grpc_pair():
    sender = make_sender("grpc", secret=SECRET, chunk_bytes=64 << 10)
    receiver = make_receiver("grpc", secret=SECRET)
    yield sender, receiver
    receiver.close()
    sender.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_grpc_pull_is_bit_exact_and_release_frees_the_lease(grpc_pair, dtype):
    sender, receiver = grpc_pair
    k, v = random_kv(dtype, layers=4, heads=3, tokens=700, head_dim=64)  # K is 8-17 chunks of 64 KiB
    ticket = sender.publish("req-1", k, v)
    assert ticket.layout == KVLayout.of(k) and ticket.address == sender.address
    expected = KVLayout(4, 3, 64, KVLayout.of(k).dtype, 0)
    k2, v2 = receiver.pull(ticket, expected)
    assert torch.equal(k2.view(torch.uint8), k.view(torch.uint8)) and torch.equal(v2.view(torch.uint8), v.view(torch.uint8))
    assert sender.num_leases == 1
    assert receiver.release(ticket) is True and sender.num_leases == 0
    assert receiver.release(ticket) is False


def test_grpc_cache_larger_than_one_message(grpc_pair):
    sender, receiver = grpc_pair
    k, v = random_kv(torch.float32, layers=2, heads=4, tokens=4096, head_dim=128)  # 16 MiB per tensor
    ticket = sender.publish("big", k, v)
    assert ticket.layout.total_bytes > 4 << 20
    k2, v2 = receiver.pull(ticket, KVLayout(2, 4, 128, "float32", 4096))
    assert torch.equal(k2, k) and torch.equal(v2, v)


def test_grpc_errors_have_precise_codes(grpc_pair):
    sender, receiver = grpc_pair
    k, v = random_kv()
    ticket = sender.publish("req", k, v)
    expected = KVLayout.of(k)

    intruder = make_receiver("grpc", secret="wrong")
    with pytest.raises(KVTransferError) as error:
        intruder.pull(ticket, expected)
    assert error.value.code == "UNAUTHENTICATED"
    with pytest.raises(KVTransferError) as error:
        intruder.release(ticket)
    assert error.value.code == "UNAUTHENTICATED" and sender.num_leases == 1  # nothing was freed
    intruder.close()

    with pytest.raises(KVTransferError) as error:
        receiver.pull(ticket, KVLayout(3, 2, 16, "bfloat16", 0))
    assert error.value.code == "FAILED_PRECONDITION" and "dtype" in str(error.value)
    with pytest.raises(KVTransferError) as error:
        receiver.pull(ticket, KVLayout(5, 2, 16, "float32", 0))
    assert error.value.code == "FAILED_PRECONDITION" and "num_layers=3, expected 5" in str(error.value)

    from dataclasses import replace

    with pytest.raises(KVTransferError) as error:
        receiver.pull(replace(ticket, request_id="nobody"), expected)
    assert error.value.code == "NOT_FOUND"
    # The failed pulls touched nothing: the real lease still pulls fine.
    k2, _ = receiver.pull(ticket, expected)
    assert torch.equal(k2, k)


def test_grpc_unclaimed_lease_expires():
    sender = make_sender("grpc", secret=SECRET, lease_ttl_s=0.2, expiry_interval_s=0.05)
    receiver = make_receiver("grpc", secret=SECRET)
    try:
        k, v = random_kv()
        ticket = sender.publish("late", k, v)
        import time

        deadline = time.monotonic() + 5
        while sender.num_leases and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.num_leases == 0 and sender.leases.num_expired == 1
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, KVLayout.of(k))
        assert error.value.code == "NOT_FOUND"
    finally:
        receiver.close()
        sender.close()


def test_sender_needs_a_secret_and_unknown_transport_is_named():
    with pytest.raises(ValueError, match="shared secret"):
        make_sender("grpc", secret="")
    with pytest.raises(ValueError, match="transport 'carrier-pigeon' is not one of: gloo, grpc, inprocess, nccl"):
        make_sender("carrier-pigeon")


def test_inprocess_backend_round_trip():
    sender, receiver = make_sender("inprocess"), make_receiver("inprocess")
    k, v = random_kv()
    ticket = sender.publish("x", k, v)
    k2, v2 = receiver.pull(ticket, KVLayout.of(k))
    assert torch.equal(k2, k) and receiver.release(ticket) and sender.num_leases == 0
    sender.close()


@pytest.mark.parametrize("kind, offset, size", [(KEY, 0, 1), (1, 123456789, 3000), (KEY, 2**40, 0), (1, 7, 2 << 20)])
def test_hand_encoded_chunks_are_protobuf_kv_messages(kind, offset, size):
    from overfill.transport.chunk_codec import decode_chunk_message, encode_chunk_message, is_header_message
    from overfill.v1 import kv_transfer_pb2 as pb

    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = encode_chunk_message(Chunk(kind, offset, memoryview(data)))
    parsed = pb.KVMessage.FromString(raw)  # what any protobuf peer sees
    assert parsed.WhichOneof("payload") == "chunk"
    assert (parsed.chunk.kind, parsed.chunk.offset, parsed.chunk.data) == (kind, offset, data)
    official = pb.KVMessage(chunk=pb.KVChunk(kind=kind, offset=offset, data=data)).SerializeToString()
    decoded = decode_chunk_message(official)  # and what protobuf makes, we read
    assert (decoded.kind, decoded.offset, bytes(decoded.data)) == (kind, offset, data)
    assert not is_header_message(raw) and is_header_message(pb.KVMessage(header=pb.KVHeader()).SerializeToString())
    with pytest.raises(ValueError):
        decode_chunk_message(raw[:-1] if size else raw + b"\x00")


# ---- lease renewal (a request waiting for a decode slot keeps its lease) ---------------------------------------------

@pytest.mark.parametrize("transport", ["inprocess", "grpc", "gloo"])
def test_renewal_extends_a_lease_one_ttl_from_now_and_never_brings_one_back(transport):
    sender = make_sender(transport, secret=SECRET, lease_ttl_s=3.0)
    receiver = make_receiver(transport, secret=SECRET)
    now = [100.0]
    sender.leases.clock = lambda: now[0]  # the expiry thread (grpc, gloo) reads this clock too
    try:
        k, v = random_kv()
        ticket = sender.publish("waiting", k, v)  # expires at 103 unless renewed
        sender.publish("nobody-waits", k, v)       # expires at 103
        for t in (102.0, 104.5, 107.0, 107.0):     # each renewal within a TTL of the last; renewing twice is harmless
            now[0] = t
            renewal = receiver.renew(ticket.address, ["waiting", "unknown"])
            assert renewal.ttl_s == 3.0 and renewal.not_found == {"unknown"}
            assert sender.leases.get("waiting").expires_at == t + 3.0  # one TTL from now, not one more TTL on top
        now[0] = 109.9
        sender.leases.expire()
        assert sender.num_leases == 1 and sender.leases.num_expired == 1  # the unrenewed lease went at its TTL
        assert receiver.renew(ticket.address, ["nobody-waits"]).not_found == {"nobody-waits"}
        k2, v2 = receiver.pull(ticket, KVLayout.of(k))
        assert torch.equal(k2, k) and torch.equal(v2, v)
        now[0] = 110.0  # renewals stopped at 107: the lease ends one TTL later, and renewing cannot bring it back
        assert receiver.renew(ticket.address, ["waiting"]).not_found == {"waiting"}
        assert sender.num_leases == 0 and sender.leases.num_expired == 2
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, KVLayout.of(k))
        assert error.value.code == "NOT_FOUND"
    finally:
        receiver.close()
        sender.close()


def test_grpc_renew_needs_the_secret_and_one_to_1024_ids(grpc_pair):
    import grpc

    from overfill.transport.grpc_backend import SECRET_METADATA_KEY, SERVICE_NAME
    from overfill.v1 import kv_transfer_pb2 as pb

    sender, receiver = grpc_pair
    ticket = sender.publish("kept", *random_kv())
    expires_at = sender.leases.get("kept").expires_at

    intruder = make_receiver("grpc", secret="wrong")
    with pytest.raises(KVTransferError) as error:
        intruder.renew(ticket.address, ["kept"])
    intruder.close()
    assert error.value.code == "UNAUTHENTICATED" and sender.leases.get("kept").expires_at == expires_at

    channel = grpc.insecure_channel(ticket.address)
    renew = channel.unary_unary(f"/{SERVICE_NAME}/Renew", request_serializer=None, response_deserializer=None)
    metadata = ((SECRET_METADATA_KEY, SECRET),)
    too_many = pb.RenewRequest(request_ids=["kept"] * 1025).SerializeToString()
    for raw, message in [(b"", "request_ids must hold 1 to 1024 ids, got 0"),
                         (too_many, "request_ids must hold 1 to 1024 ids, got 1025"),
                         (b"\x0a\x02\xff\xff", "request_ids[0] is not valid UTF-8")]:
        with pytest.raises(grpc.RpcError) as rpc_error:
            renew(raw, metadata=metadata, timeout=10)
        assert (rpc_error.value.code(), rpc_error.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    with pytest.raises(grpc.RpcError) as rpc_error:
        renew(b"\xff", metadata=(), timeout=10)  # no secret: refused before the bytes are looked at
    assert rpc_error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()
    assert sender.leases.get("kept").expires_at == expires_at  # nothing above renewed it

    others = [f"gone-{i}" for i in range(2500)]  # the receiver splits a long list into calls of at most 1024
    renewal = receiver.renew(ticket.address, others[:1500] + ["kept"] + others[1500:])
    assert renewal.not_found == set(others) and renewal.ttl_s == sender.leases.ttl_s
    assert sender.leases.get("kept").expires_at > expires_at
    assert receiver.release(ticket) and sender.num_leases == 0


def test_a_gone_prefill_replica_is_forgotten_by_the_receiver():
    """The KV service stops (its replica went away): the pull fails UNAVAILABLE and the receiver keeps no channel to
    that address; a live one keeps its channel."""
    gone, live = make_sender("grpc", secret=SECRET), make_sender("grpc", secret=SECRET)
    receiver = make_receiver("grpc", secret=SECRET)
    try:
        k, v = random_kv()
        lost, kept = gone.publish("lost", k, v), live.publish("kept", k, v)
        assert receiver.release(kept) is True
        gone.close()
        with pytest.raises(KVTransferError) as refused:
            receiver.pull(lost, KVLayout.of(k), timeout_s=5.0)
        assert refused.value.code is StatusCode.UNAVAILABLE
        assert receiver.channels.addresses == [live.address]
    finally:
        receiver.close()
        live.close()

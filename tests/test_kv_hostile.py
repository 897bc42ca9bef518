"""The internal KV service and its puller under hostile or broken peers: wrong secrets, wrong geometry and dtype,
unknown ids, undecodable request frames, malformed and truncated KV streams. Each gets a precise status, and the
KV of the request that is legitimately leased meanwhile stays untouched and pulls bit-exactly afterwards.
Hypothesis fuzzes the raw frames both sides accept (derandomized, so CI runs the same examples every time)."""

import asyncio
import dataclasses
import threading
from concurrent import futures

import grpc
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from overfill.transport.base import KVTicket, KVTransferError
from overfill.transport.chunk_codec import encode_chunk_message
from overfill.transport.grpc_backend import SECRET_METADATA_KEY, SERVICE_NAME, GrpcKVReceiver, GrpcKVSender
from overfill.transport.wire import DTYPES, KVLayout, encode_chunks
from overfill.v1 import kv_transfer_pb2 as pb

SECRET = "hostile-test-secret"
LEASE_ID = "leased-request-7f3a9c21"  # long and random enough that no fuzzed frame names it by chance
CHUNK_BYTES = 4096
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def random_kv(dtype=torch.float32, layers=3, heads=2, tokens=37, head_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (layers, heads, tokens, head_dim)  # [L, H, T, D]
    return torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype)


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


class HostileKVServer:
    """A KVTransfer server that answers Pull with whatever frames a test scripted for that request id."""

    def __init__(self):
        self.scripts: dict[str, list[bytes]] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Pull": grpc.unary_stream_rpc_method_handler(self._pull, request_deserializer=pb.PullRequest.FromString,
                                                         response_serializer=lambda raw: raw),
        })])
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _pull(self, request, context):
        yield from self.scripts.pop(request.request_id, [])

    def ticket(self, request_id: str, frames: list[bytes], layout: KVLayout) -> KVTicket:
        self.scripts[request_id] = frames
        return KVTicket(request_id, self.address, layout, expires_at=0.0)


@pytest.fixture(scope="module")
def kv():
    sender = GrpcKVSender(secret=SECRET, chunk_bytes=CHUNK_BYTES, lease_ttl_s=3600)
    receiver = GrpcKVReceiver(secret=SECRET)
    hostile = HostileKVServer()
    channel = grpc.insecure_channel(sender.address)
    k, v = random_kv()
    ticket = sender.publish(LEASE_ID, k.clone(), v.clone())
    yield {"sender": sender, "receiver": receiver, "hostile": hostile, "channel": channel, "ticket": ticket,
           "k": k, "v": v, "layout": KVLayout.of(k)}
    channel.close()
    hostile.server.stop(None)
    receiver.close()
    sender.close()


def raw_call(kv, method: str, raw: bytes, secret: str | None = SECRET) -> tuple[str, str, list[bytes]]:
    """Send request bytes as they are (no client-side serialization): (status name, details, messages)."""
    metadata = ((SECRET_METADATA_KEY, secret),) if secret is not None else ()
    if method == "Pull":
        call = kv["channel"].unary_stream(f"/{SERVICE_NAME}/Pull", request_serializer=None,
                                          response_deserializer=None)
        try:
            messages = list(call(raw, metadata=metadata, timeout=10))
            return "OK", "", messages
        except grpc.RpcError as e:
            return e.code().name, e.details() or "", []
    call = kv["channel"].unary_unary(f"/{SERVICE_NAME}/Release", request_serializer=None, response_deserializer=None)
    try:
        return "OK", "", [call(raw, metadata=metadata, timeout=10)]
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", []


def pull_request(request_id: str = LEASE_ID, layout: KVLayout | None = None, **changes) -> bytes:
    layout = dataclasses.replace(layout or KVLayout(3, 2, 16, "float32", 0), **changes)
    return pb.PullRequest(request_id=request_id, expected_dtype=layout.dtype, expected_geometry=pb.KVGeometry(
        num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim)).SerializeToString()


def assert_lease_intact(kv) -> None:
    leases = kv["sender"].leases
    lease = leases.get(LEASE_ID)
    assert len(leases) == 1 and lease is not None
    assert bit_equal(lease.k, kv["k"]) and bit_equal(lease.v, kv["v"])


def test_hostile_calls_get_precise_statuses_and_leave_the_lease_alone(kv):
    # 1) Wrong, missing or empty secret: UNAUTHENTICATED, checked before anything else (even unparsable bytes).
    for secret in ("wrong", None, "", SECRET + "x", SECRET[:-1]):
        for method, raw in (("Pull", pull_request()), ("Release", pb.ReleaseRequest(request_id=LEASE_ID)
                                                                    .SerializeToString()), ("Pull", b"\xff\xff")):
            code, details, _ = raw_call(kv, method, raw, secret)
            assert (code, details) == ("UNAUTHENTICATED", "missing or wrong KV service secret"), (secret, method)
    # 2) Wrong geometry or dtype for the leased request: FAILED_PRECONDITION naming the field.
    for changes, field in [({"num_layers": 4}, "num_layers=3, expected 4"), ({"num_kv_heads": 1}, "num_kv_heads=2"),
                           ({"head_dim": 0}, "head_dim=16, expected 0"), ({"dtype": "float16"}, "dtype='float32'")]:
        code, details, _ = raw_call(kv, "Pull", pull_request(**changes))
        assert code == "FAILED_PRECONDITION" and field in details, (changes, code, details)
    # ... and a dtype that is none: INVALID_ARGUMENT, echoed cut short (a 10 KB one broke gRPC's trailer limit).
    for dtype in ("int8", "", "FLOAT32", "\u00e9" * 5000):
        code, details, _ = raw_call(kv, "Pull", pull_request(dtype=dtype))
        assert code == "INVALID_ARGUMENT" and "expected_dtype must be one of float32" in details, (dtype, code)
        assert len(details) < 200
    # 3) Unknown ids: NOT_FOUND (the id echoed cut short, so even a 200 KB id gets its status, not a trailer error).
    for request_id in ("nobody", "", LEASE_ID + "x", LEASE_ID.upper(), "\u2603" * 100_000):
        code, details, _ = raw_call(kv, "Pull", pull_request(request_id))
        assert code == "NOT_FOUND" and "no KV lease for request" in details and len(details) < 1000, code
        code, _, (response,) = raw_call(kv, "Release", pb.ReleaseRequest(request_id=request_id).SerializeToString())
        assert code == "OK" and pb.ReleaseResponse.FromString(response).released is False
    # 4) Bytes protobuf refuses: INVALID_ARGUMENT naming the field, never INTERNAL.
    bad_utf8 = pull_request("X" * len(LEASE_ID)).replace(b"X" * len(LEASE_ID), b"\xff" * len(LEASE_ID))
    for method in ("Pull", "Release"):
        assert raw_call(kv, method, bad_utf8)[:2] == ("INVALID_ARGUMENT", "request_id is not valid UTF-8")
        code, details, _ = raw_call(kv, method, b"\x12\x05\x08")
        assert code == "INVALID_ARGUMENT" and "truncated" in details, details
    code, details, _ = raw_call(kv, "Pull", pull_request().replace(b"float32", b"float\xc332"))
    assert (code, details) == ("INVALID_ARGUMENT", "expected_dtype is not valid UTF-8")
    # 5) Every truncation of a valid request for the lease: a precise status, never INTERNAL or UNKNOWN.
    valid = pull_request()
    for cut in range(len(valid)):
        code, details, _ = raw_call(kv, "Pull", valid[:cut])
        assert code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"), (cut, code, details)
    assert_lease_intact(kv)
    # 6) The lease still pulls bit-exactly.
    k, v = kv["receiver"].pull(kv["ticket"], KVLayout(3, 2, 16, "float32", 0))
    assert bit_equal(k, kv["k"]) and bit_equal(v, kv["v"])
    assert_lease_intact(kv)


def valid_stream(request_id: str, k: torch.Tensor, v: torch.Tensor, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    layout = KVLayout.of(k)
    header = pb.KVMessage(header=pb.KVHeader(
        request_id=request_id, dtype=layout.dtype, num_tokens=layout.num_tokens, total_bytes=layout.total_bytes,
        geometry=pb.KVGeometry(num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads,
                               head_dim=layout.head_dim)))
    return [header.SerializeToString()] + [encode_chunk_message(c) for c in encode_chunks(k, v, chunk_bytes)]


def header_frame(request_id: str, layout: KVLayout, total_bytes: int | None = None) -> bytes:
    return pb.KVMessage(header=pb.KVHeader(
        request_id=request_id, dtype=layout.dtype, num_tokens=layout.num_tokens,
        total_bytes=layout.total_bytes if total_bytes is None else total_bytes,
        geometry=pb.KVGeometry(num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads,
                               head_dim=layout.head_dim))).SerializeToString()


def test_malformed_kv_streams_are_refused_with_data_loss(kv):
    hostile, receiver, layout = kv["hostile"], kv["receiver"], kv["layout"]
    expected = dataclasses.replace(layout, num_tokens=0)
    good = valid_stream("s", kv["k"], kv["v"])
    chunks = good[1:]
    cases = [
        ("malformed header", [b"\x0a\x05\x0a\x09"] + chunks, "malformed KV header"),
        ("header for another request", [header_frame("someone-else", layout)] + chunks, "for request 'someone-else'"),
        ("wrong geometry", [header_frame("s", dataclasses.replace(layout, num_kv_heads=4))], "num_kv_heads=4"),
        ("wrong dtype", [header_frame("s", dataclasses.replace(layout, dtype="float16"))], "dtype='float16'"),
        ("unknown dtype", [header_frame("s", dataclasses.replace(layout, dtype="int8"), 0)], "dtype='int8'"),
        ("more tokens than leased", [header_frame("s", dataclasses.replace(layout, num_tokens=10**9))],
         "num_tokens=1000000000, expected 37"),
        ("total_bytes lies", [header_frame("s", layout, layout.total_bytes + 2)] + chunks, "total_bytes"),
        ("truncated stream", good[:-1], "ended after"),
        ("header only", good[:1], "ended after 0 of"),
        ("nothing at all", [], "without a header"),
        ("chunk before header", chunks[:1] + good, "before its header"),
        ("second header", good[:2] + good[:1], "second header"),
        ("repeated chunk", good + chunks[:1], "overlaps"),
        ("garbage chunk", good[:1] + [b"\x12\x03\x08\x01\x10"], "malformed KV chunk"),
        ("unknown frame", good[:1] + [b"\x00\x01"], "malformed KV chunk"),
    ]
    for name, frames, message in cases:
        ticket = hostile.ticket("s", frames, layout)
        with pytest.raises(KVTransferError) as error:
            receiver.pull(ticket, expected)
        assert error.value.code == "DATA_LOSS" and message in str(error.value), (name, str(error.value))
    # The well-formed stream from the same server is accepted bit-exactly, and the real lease was never touched.
    k, v = receiver.pull(hostile.ticket("s", good, layout), expected)
    assert bit_equal(k, kv["k"]) and bit_equal(v, kv["v"])
    assert_lease_intact(kv)


@st.composite
def mutated(draw, frames: st.SearchStrategy) -> bytes:
    """A frame with bytes overwritten, then cut and extended."""
    raw = bytearray(draw(frames))
    for _ in range(draw(st.integers(0, 3))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(raw)))
    return bytes(raw[:cut]) + draw(st.binary(max_size=8))


@FUZZ
@given(method=st.sampled_from(["Pull", "Release"]),
       raw=st.one_of(st.binary(max_size=64),
                     mutated(st.just(pull_request())),
                     mutated(st.builds(pull_request, st.text(max_size=40), st.just(None),
                                       dtype=st.sampled_from(["float32", "bfloat16", "x"]))),
                     mutated(st.just(pb.ReleaseRequest(request_id="someone-else").SerializeToString()))))
def test_fuzzed_request_frames_get_precise_statuses(kv, method, raw):
    parsed = None
    try:
        parsed = (pb.PullRequest if method == "Pull" else pb.ReleaseRequest).FromString(raw)
    except Exception:  # noqa: BLE001  unparsable: must be INVALID_ARGUMENT
        pass
    assume(method == "Pull" or parsed is None or parsed.request_id != LEASE_ID)  # a Release naming it would free it
    code, details, messages = raw_call(kv, method, raw)
    if parsed is None:
        assert code == "INVALID_ARGUMENT" and details, (raw, code, details)
    elif method == "Release":
        assert code == "OK" and pb.ReleaseResponse.FromString(messages[0]).released is False
    elif parsed.expected_dtype not in DTYPES:  # the request's own fields first, then the lease table
        assert code == "INVALID_ARGUMENT" and "expected_dtype must be one of" in details, (raw, code, details)
    elif parsed.request_id != LEASE_ID:
        assert code == "NOT_FOUND", (raw, code, details)
    elif code == "OK":  # the fuzz found the lease's own request: then it must be the lease's exact bytes
        assert len(messages) == 1 + 2 * -(-kv["layout"].tensor_bytes // CHUNK_BYTES)
    else:
        assert code == "FAILED_PRECONDITION" and "expected" in details, (raw, code, details)
    assert_lease_intact(kv)


_fuzz_ids = iter(range(10**9))  # a fresh request id per example (each example leases its own)


@FUZZ
@given(data=st.data())
def test_fuzzed_kv_streams_are_bit_exact_or_data_loss(kv, data):
    """Whatever frames a KV server sends, the puller raises DATA_LOSS or returns KV of the leased layout (the exact
    bytes when the frames were the real ones: a well-framed chunk with other data is not detectable, and need not
    be, as gRPC's transport carries bytes intact), never another error."""
    k, v, layout = kv["k"], kv["v"], kv["layout"]
    request_id = f"s{next(_fuzz_ids):09d}"  # one width: the frames, and so what hypothesis draws, keep their sizes
    good = valid_stream(request_id, k, v)
    frame = st.one_of(st.sampled_from(good), mutated(st.sampled_from(good)), st.binary(max_size=40))
    frames = data.draw(st.one_of(
        st.lists(frame, max_size=12),
        st.builds(lambda cut, extra: good[:cut] + extra, st.integers(0, len(good)), st.lists(frame, max_size=2)),
        st.permutations(good).map(lambda rest: [good[0]] + [f for f in rest if f is not good[0]]),
    ))
    ticket = kv["hostile"].ticket(request_id, frames, layout)
    try:
        k2, v2 = kv["receiver"].pull(ticket, dataclasses.replace(layout, num_tokens=0))
    except KVTransferError as e:
        assert e.code == "DATA_LOSS", str(e)
    else:
        assert k2.shape == v2.shape == k.shape and k2.dtype == v2.dtype == k.dtype
        if all(any(f is g for g in good) for f in frames):
            assert bit_equal(k2, k) and bit_equal(v2, v)


def test_a_hostile_stream_never_touches_another_sequence_in_the_decode_pool(kv):
    """Decode: request A (KV from the real service) decodes while request B's pull gets a malformed stream; B fails
    with UNAVAILABLE naming the data loss, A's tokens are the ones it makes alone, and every slot is free after."""
    from overfill.engine.runner import ModelRunner
    from overfill.engine.sampling import SamplingParams
    from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
    from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
    from overfill.serving.types import PrefillRequest, ServiceError
    from tests.tiny import tiny_model

    full = ModelRunner(tiny_model("llama"))  # decoder = the full model: the KV geometry is all that matters here
    sender = GrpcKVSender(secret=SECRET, chunk_bytes=CHUNK_BYTES)
    no_eos = set()  # every request runs to max_new_tokens
    prefill = PrefillWorker(full, sender, no_eos, PrefillSettings(max_seq_len=64, max_batch_tokens=64,
                                                                  max_batch_size=2))
    decode = DecodeWorker(full, GrpcKVReceiver(secret=SECRET), no_eos, DecodeSettings(num_slots=2, max_seq_len=64))
    sampling = SamplingParams(max_new_tokens=12)

    async def decode_a(name: str, hostile: PrefillRequest | None = None) -> list[int]:
        a = await prefill.prefill(PrefillRequest(name, [5, 9, 13, 17, 21], sampling))
        tokens = [a.first_token]
        stream = decode.generate(a, sampling)
        tokens += (await stream.__anext__()).token_ids  # A holds its slot and is decoding
        if hostile is not None:
            b = await prefill.prefill(hostile)
            frames = [header_frame(b.ticket.request_id, dataclasses.replace(b.ticket.layout, num_kv_heads=1))]
            bad = dataclasses.replace(b, ticket=kv["hostile"].ticket(b.ticket.request_id, frames, b.ticket.layout))
            with pytest.raises(ServiceError) as error:
                async for _ in decode.generate(bad, sampling):
                    pass
            assert error.value.code == "UNAVAILABLE" and "DATA_LOSS" in error.value.message
            assert sender.release(b.request_id)  # B's real lease, which nobody pulled
        async for chunk in stream:
            tokens += chunk.token_ids
        return tokens

    async def run():
        alone = await decode_a("alone")
        beside = await decode_a("beside", PrefillRequest("b", [7, 7, 7, 7], sampling))
        return alone, beside

    try:
        alone, beside = asyncio.run(run())
        assert beside == alone and len(alone) == 12
        assert decode.cache.num_free_slots == 2 and sender.num_leases == 0
    finally:
        prefill.close(), decode.close(), sender.close()
    assert_lease_intact(kv)


def test_lease_table_is_consistent_under_concurrent_hostile_pulls(kv):
    """Hostile pulls from several threads at once (wrong geometry, unknown ids, garbage) while the leased request is
    pulled concurrently: every legitimate pull is bit-exact and the table still holds just the lease."""
    errors, pulled = [], []

    def hostile(index: int):
        for raw in (pull_request(num_layers=9), pull_request(f"x{index}"), b"\x0a\xff", pull_request()[:-3]):
            code = raw_call(kv, "Pull", raw)[0]
            if code not in ("FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT"):
                errors.append(code)

    def legitimate():
        k, v = kv["receiver"].pull(kv["ticket"], KVLayout(3, 2, 16, "float32", 0))
        pulled.append(bit_equal(k, kv["k"]) and bit_equal(v, kv["v"]))

    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=legitimate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and pulled == [True, True, True]
    assert_lease_intact(kv)


@pytest.fixture(scope="module")
def gloo_sender():
    """The nccl/gloo sender: the same KV service plus OpenGroup and Send (no group is ever opened here)."""
    from overfill.transport.base import make_sender

    sender = make_sender("gloo", secret=SECRET, lease_ttl_s=3600)
    k, v = random_kv()
    sender.publish(LEASE_ID, k, v)
    channel = grpc.insecure_channel(sender.address)
    yield {"sender": sender, "channel": channel, "k": k, "v": v}
    channel.close()
    sender.close()


def gloo_call(gloo, method: str, raw: bytes, secret: str | None = SECRET) -> tuple[str, str]:
    metadata = ((SECRET_METADATA_KEY, secret),) if secret is not None else ()
    stub = gloo["channel"].unary_unary(f"/{SERVICE_NAME}/{method}", request_serializer=None,
                                       response_deserializer=None)
    try:
        stub(raw, metadata=metadata, timeout=10)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


def send_request(dtype: str = "float32", group_id: str = "no-such-group", request_id: str = LEASE_ID) -> bytes:
    geometry = pb.KVGeometry(num_layers=3, num_kv_heads=2, head_dim=16)
    return pb.SendRequest(request_id=request_id, group_id=group_id, expected_dtype=dtype,
                          expected_geometry=geometry).SerializeToString()


def test_open_group_and_send_refuse_hostile_calls_precisely(gloo_sender):
    for method, raw in (("Send", send_request()), ("OpenGroup", pb.OpenGroupRequest(receiver_id="r", backend="gloo")
                                                                 .SerializeToString()), ("Send", b"\xff")):
        assert gloo_call(gloo_sender, method, raw, "wrong") == ("UNAUTHENTICATED", "missing or wrong KV service secret")
        assert gloo_call(gloo_sender, method, raw, None)[0] == "UNAUTHENTICATED"
    # Bytes protobuf refuses were INTERNAL ("Exception deserializing request!").
    assert gloo_call(gloo_sender, "Send", send_request(request_id="@" * 8).replace(b"@" * 8, b"\xff" * 8)) == \
        ("INVALID_ARGUMENT", "request_id is not valid UTF-8")
    code, details = gloo_call(gloo_sender, "OpenGroup", b"\x0a\x09r")
    assert code == "INVALID_ARGUMENT" and "receiver_id is truncated" in details
    # A dtype that is none, however long, is named cut short (a 10 KB one overflowed the trailers).
    for dtype in ("int8", "", "\u00e9" * 5000):
        code, details = gloo_call(gloo_sender, "Send", send_request(dtype))
        assert code == "INVALID_ARGUMENT" and "expected_dtype must be one of" in details and len(details) < 200
    assert gloo_call(gloo_sender, "Send", send_request())[0] == "ABORTED"  # no such group: open one first
    assert gloo_call(gloo_sender, "OpenGroup", pb.OpenGroupRequest(backend="gloo").SerializeToString()) == \
        ("INVALID_ARGUMENT", "receiver_id is empty")
    code, details = gloo_call(gloo_sender, "OpenGroup", pb.OpenGroupRequest(receiver_id="r", backend="x" * 9000)
                              .SerializeToString())
    assert code == "FAILED_PRECONDITION" and len(details) < 300
    lease = gloo_sender["sender"].leases.get(LEASE_ID)
    assert len(gloo_sender["sender"].leases) == 1 and bit_equal(lease.k, gloo_sender["k"])


@FUZZ
@given(method=st.sampled_from(["Send", "OpenGroup"]),
       raw=st.one_of(st.binary(max_size=64), mutated(st.just(send_request())),
                     mutated(st.just(pb.OpenGroupRequest(receiver_id="r", backend="nccl").SerializeToString()))))
def test_fuzzed_open_group_and_send_frames_get_precise_statuses(gloo_sender, method, raw):
    request_class = pb.SendRequest if method == "Send" else pb.OpenGroupRequest
    try:
        parsed = request_class.FromString(raw)
    except Exception:  # noqa: BLE001  unparsable: must be INVALID_ARGUMENT
        parsed = None
    assume(not (method == "OpenGroup" and parsed is not None and parsed.receiver_id and parsed.backend == "gloo"))
    code, details = gloo_call(gloo_sender, method, raw)
    if parsed is None:
        assert code == "INVALID_ARGUMENT" and details, (raw, code, details)
    elif method == "Send":  # no group is open: a valid request is ABORTED, after its own fields were checked
        assert code == ("INVALID_ARGUMENT" if parsed.expected_dtype not in DTYPES else "ABORTED"), (raw, code)
    else:
        assert code == ("INVALID_ARGUMENT" if not parsed.receiver_id else "FAILED_PRECONDITION"), (raw, code)
    assert len(gloo_sender["sender"].leases) == 1

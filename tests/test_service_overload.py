"""The service under overload and hostile input, on one local Ray cluster with tiny models.

Back-pressure: a burst of 10x what the configured queues and slots admit, sent at once, ends with every request
either served correctly or refused with RESOURCE_EXHAUSTED before the served ones; nothing hangs, the bounded queues
stay bounded, the replicas stay up, and no KV is left (refusal latencies and memory growth against thresholds:
`overfill bench overload`). Bad input: a hypothesis fuzz of the gRPC API (field values
and sizes, unicode, invalid UTF-8, NaN/inf, unknown roles, duplicate request ids) never gets INTERNAL or UNKNOWN,
and invalid requests get INVALID_ARGUMENT naming their field.
"""

import asyncio
import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from overfill.bench.overload import Outcome, burst_prompt, replica_rss, send_burst, summarize
from overfill.client import AsyncOverFillClient, OverFillClient, OverFillError
from overfill.v1 import generation_pb2 as pb
from services.router.grpc_handlers import MAX_REQUEST_BYTES
from tests.service_helpers import assert_no_kv_left, in_process, pool_stats, tiny_service

pytestmark = pytest.mark.service

# What the pools admit at once: decode slots + decode waiting + prefill batch + prefill queue.
NUM_SLOTS, MAX_WAITING, MAX_BATCH, MAX_QUEUED = 2, 2, 2, 4
CAPACITY = NUM_SLOTS + MAX_WAITING + MAX_BATCH + MAX_QUEUED
MAX_QUEUED_TOKENS, MAX_LEASED_TOKENS = 256, 512
ROUTER_ONGOING, ROUTER_QUEUED = 16, 4
DEADLINE_S = 60.0
MAX_TOKENS_LIMIT = 64  # tiny_service_config's server.max_tokens_limit


@pytest.fixture(scope="module")
def service(service_models):
    with tiny_service(
        service_models, f"decode.num_slots={NUM_SLOTS}", f"decode.max_waiting={MAX_WAITING}",
        f"prefill.max_batch_size={MAX_BATCH}", f"prefill.max_queued_requests={MAX_QUEUED}",
        f"prefill.max_queued_tokens={MAX_QUEUED_TOKENS}", f"prefill.max_leased_tokens={MAX_LEASED_TOKENS}",
        f"server.max_ongoing_requests={ROUTER_ONGOING}", f"server.max_queued_requests={ROUTER_QUEUED}",
        "prefill.torch_threads=1", "decode.torch_threads=1",  # two cores: leave some to the proxy and the router
    ) as service:
        yield service


def replica_ids(config) -> dict[str, set[str]]:
    """{deployment: ids of its live replica actors} (a replaced replica gets a new id)."""
    from ray.util import list_named_actors

    ids: dict[str, set[str]] = {"router": set(), "prefill": set(), "decode": set()}
    for entry in list_named_actors(all_namespaces=True):
        match = re.fullmatch(rf"SERVE_REPLICA::{config.server.app_name}#(\w+)#(\w+)", entry["name"])
        if match and match.group(1) in ids:
            ids[match.group(1)].add(match.group(2))
    return ids


def burst(service, num_requests: int) -> tuple[list[Outcome], list, float]:
    """`num_requests` streams sent at once (overfill/bench/overload.py) -> (their outcomes, pool stats sampled every
    20 ms meanwhile, seconds the burst took)."""
    config = service["config"]
    samples, stop = [], threading.Event()

    def sample_pools():
        while not stop.is_set():
            samples.append((pool_stats(config, "prefill"), pool_stats(config, "decode")))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_pools, daemon=True)
    sampler.start()
    started = time.perf_counter()
    results = asyncio.run(send_burst(service["address"], num_requests, DEADLINE_S))
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join(10)
    return results, samples, elapsed


def check_burst(service, results: list[Outcome], samples: list, elapsed: float) -> None:
    """What a burst must do whatever the machine's speed. How fast refusals come back and how memory grows are
    measured by `overfill bench overload` (its thresholds hold on a quiet machine only)."""
    # 1) Every request was served correctly or refused with RESOURCE_EXHAUSTED; nothing else, nothing hung.
    assert {r.code for r in results} <= {"OK", "RESOURCE_EXHAUSTED"}, [(r.code, r.message) for r in results
                                                                       if r.code != "OK"]
    served = [i for i, r in enumerate(results) if r.code == "OK"]
    summary = summarize(results)
    # At least what decode holds at once (slots + waiting) is served: the rest of a burst sent all at once may be
    # refused, by decode too (after its first token).
    assert len(served) >= NUM_SLOTS + MAX_WAITING and summary["refused"] >= len(results) // 2, summary
    for index in served:
        prompt, max_tokens = burst_prompt(index)
        assert results[index].token_ids == in_process(service, prompt, max_tokens), index
    print(f"\nburst of {len(results)} (capacity {CAPACITY}) in {elapsed:.2f} s:", json.dumps(summary))
    # 2) Refusals wait for no capacity: they come back before the requests that are served (which queue for it).
    assert summary["refused_p50_s"] < summary["served_p50_s"], summary
    assert max(r.seconds for r in results) < DEADLINE_S / 4  # and nothing came near its deadline
    # 3) The bounds held at every sample.
    assert samples
    for prefill, decode in samples:
        # max_queued_requests bounds the requests waiting beyond the free staging slots (up to MAX_BATCH): a sample
        # taken as a batch ends sees its freed slots before the waiting requests move into them.
        assert prefill["num_waiting"] <= MAX_QUEUED + MAX_BATCH and prefill["queued_prompt_tokens"] <= MAX_QUEUED_TOKENS
        assert prefill["leased_tokens"] <= MAX_LEASED_TOKENS, prefill
        assert decode["num_waiting"] <= MAX_WAITING and decode["num_running"] <= NUM_SLOTS


def test_bursts_of_ten_times_capacity_are_served_or_refused_fast(service):
    """Two bursts, the first also warming the replicas up: each is served or refused as it should be, by the same
    replicas (none restarted), and no KV is left. (Replica memory over the bursts: the overload bench.)"""
    config = service["config"]
    replicas_before = replica_ids(config)
    check_burst(service, *burst(service, 10 * CAPACITY))
    rss_warm = replica_rss(config.server.app_name)
    assert set(rss_warm) == {"router", "prefill", "decode"}, rss_warm
    check_burst(service, *burst(service, 10 * CAPACITY))
    # 4) Same replicas, no KV left, and the next request is served correctly.
    assert replica_ids(config) == replicas_before
    rss_after = replica_rss(config.server.app_name)
    print("replica RSS growth over the second burst (MiB):",
          {name: round((rss_after[name] - rss_warm[name]) / 2**20, 1) for name in rss_warm if name in rss_after})
    assert_no_kv_left(config)
    with OverFillClient(service["address"], timeout_s=DEADLINE_S) as client:
        assert client.health() == "SERVING"
        tokens = [t for piece in client.generate("after the storm", max_tokens=12) for t in piece.token_ids]
    assert tokens == in_process(service, "after the storm", 12)


def test_requests_sharing_a_request_id_are_independent(service):
    """A request_id labels logs and replies only: concurrent requests with one id are all served, each correctly,
    and one ending early (cancelled) frees only its own KV."""
    prompts = [f"twin {i} speaks" for i in range(NUM_SLOTS + MAX_WAITING - 1)]  # with the one cancelled: all admitted

    async def run():
        async with AsyncOverFillClient(service["address"], timeout_s=DEADLINE_S) as client:
            async def one(prompt):
                pieces = [p async for p in client.generate(prompt, max_tokens=20, request_id="same-id")]
                assert all(p.request_id == "same-id" for p in pieces)
                return [t for p in pieces for t in p.token_ids]

            async def cancelled():
                stream = client.generate("a twin that leaves", max_tokens=60, request_id="same-id")
                await stream.__anext__()
                await stream.aclose()

            results = await asyncio.gather(*(one(p) for p in prompts), cancelled())
            return results[:-1]

    assert asyncio.run(run()) == [in_process(service, p, 20) for p in prompts]
    assert_no_kv_left(service["config"])


def test_a_megabyte_prompt_is_refused_at_once_and_stalls_no_other_stream(service):
    """1 Mi CJK characters (3 MiB on the wire, accepted as bytes) cannot fit 256 tokens: refused by length before
    tokenizing, which took seconds on the router's event loop and stalled every stream it carried."""
    huge = "".join(chr(0x4E00 + i % 2000) for i in range(1 << 20))

    async def run():
        async with AsyncOverFillClient(service["address"], timeout_s=DEADLINE_S) as client:
            gaps = []

            async def steady():
                last = time.perf_counter()
                async for _ in client.generate("a steady stream", max_tokens=48):
                    gaps.append(time.perf_counter() - last)
                    last = time.perf_counter()

            async def megabyte():
                await asyncio.sleep(0.2)  # while the stream runs
                start = time.perf_counter()
                with pytest.raises(OverFillError) as error:
                    await client.generate_unary(huge, max_tokens=8)
                return error.value, time.perf_counter() - start

            _, (error, seconds) = await asyncio.gather(steady(), megabyte())
            return gaps, error, seconds

    gaps, error, seconds = asyncio.run(run())
    print(f"\n1 Mi-character prompt refused in {seconds * 1e3:.0f} ms; longest gap of the stream beside it "
          f"{max(gaps) * 1e3:.0f} ms")
    assert error.code == "RESOURCE_EXHAUSTED" and "prompt (1048576 characters) cannot fit" in error.message
    assert seconds < 2.0 and max(gaps) < 1.0, (seconds, max(gaps))
    assert_no_kv_left(service["config"])


# ---- the fuzz -------------------------------------------------------------------------------------------------

FIELDS = ("request_id", "max_tokens", "temperature", "top_p", "stop", "prompt", "chat")
ROLES = ("system", "user", "assistant")
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok\x80"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def string_field(number: int, raw: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)  # any unicode but lone surrogates
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy, odds: int = 6) -> st.SearchStrategy:
    """`invalid` about once in `odds + 1` draws, so that about a third of the requests are valid throughout."""
    return st.integers(0, odds).flatmap(lambda k: invalid if k == odds else valid)  # 0, the simplest, is valid


requests = st.fixed_dictionaries({
    "input": mostly(
        st.one_of(st.tuples(st.just("prompt"), texts.filter(str.strip)),
                  st.tuples(st.just("chat"), st.lists(st.tuples(st.sampled_from(ROLES), texts), min_size=1,
                                                      max_size=3))),
        st.one_of(st.none(), st.tuples(st.just("prompt"), st.sampled_from(["", "   \n\t"])),
                  st.tuples(st.just("prompt"), st.integers(100, 400).map(lambda n: " ".join(["word"] * n))),
                  st.tuples(st.just("chat"), st.lists(st.tuples(texts, texts), max_size=3)))),
    "max_tokens": mostly(st.integers(0, 24), st.integers(MAX_TOKENS_LIMIT + 1, 2**32 - 1)),
    "temperature": mostly(st.one_of(st.none(), st.floats(0, 10, width=32), st.sampled_from([1e-40, -0.0])),
                          floats32),
    "top_p": mostly(st.one_of(st.none(), st.floats(0, 1, width=32, exclude_min=True)), floats32),
    "seed": st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    "stop": mostly(st.lists(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12), max_size=3),
                   st.lists(st.one_of(texts, st.text(min_size=257, max_size=300)), min_size=1, max_size=10)),
    "request_id": mostly(st.one_of(st.just(""), st.from_regex(VALID_ID, fullmatch=True), st.just("dup-id")), texts),
    "invalid_utf8": mostly(st.none(), st.tuples(st.sampled_from([(7, "stop"), (1, "prompt"), (8, "request_id")]),
                                                st.sampled_from(INVALID_UTF8))),
    "method": st.sampled_from(["Generate", "GenerateUnary"]),
})


def encode(fields: dict) -> tuple[pb.GenerateRequest, bytes]:
    request = pb.GenerateRequest(max_tokens=fields["max_tokens"], stop=fields["stop"],
                                 request_id=fields["request_id"])
    if fields["input"] is not None:
        kind, value = fields["input"]
        if kind == "prompt":
            request.prompt = value
        else:
            request.chat.CopyFrom(pb.ChatMessages(messages=[pb.ChatMessage(role=r, content=c) for r, c in value]))
    for name in ("temperature", "top_p", "seed"):
        if fields[name] is not None:
            setattr(request, name, fields[name])
    raw = request.SerializeToString()
    if fields["invalid_utf8"] is not None:  # a later occurrence of the field, as a client with a bug might send
        (number, _), bad = fields["invalid_utf8"]
        raw += string_field(number, bad)
    return request, raw


def obviously_invalid(request: pb.GenerateRequest, fields: dict) -> str | None:
    """The field an independent reading of the API contract (proto comments) says is invalid, if any."""
    if fields["invalid_utf8"] is not None:
        return fields["invalid_utf8"][0][1]
    if request.request_id and not VALID_ID.fullmatch(request.request_id):
        return "request_id"
    if request.max_tokens > MAX_TOKENS_LIMIT:
        return "max_tokens"
    temperature = request.temperature  # float32 as the server sees it
    if request.HasField("temperature") and not (math.isfinite(temperature) and 0 <= temperature <= 10):
        return "temperature"
    if request.HasField("top_p") and not (math.isfinite(request.top_p) and 0 < request.top_p <= 1):
        return "top_p"
    if len(request.stop) > 8 or any(not 1 <= len(s) <= 256 for s in request.stop):
        return "stop"
    which = request.WhichOneof("input")
    if which is None:
        return "prompt"
    if which == "prompt" and not request.prompt.strip():
        return "prompt"
    if which == "chat" and (not request.chat.messages or any(m.role not in ROLES for m in request.chat.messages)):
        return "chat"
    return None


def call(channel: grpc.Channel, method: str, raw: bytes) -> tuple[str, str, list]:
    path = f"/overfill.v1.Generation/{method}"
    try:
        if method == "Generate":
            stub = channel.unary_stream(path, request_serializer=None,
                                        response_deserializer=pb.GenerateResponse.FromString)
            return "OK", "", list(stub(raw, timeout=DEADLINE_S))
        stub = channel.unary_unary(path, request_serializer=None,
                                   response_deserializer=pb.GenerateUnaryResponse.FromString)
        return "OK", "", [stub(raw, timeout=DEADLINE_S)]
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", []


@pytest.fixture(scope="module")
def fuzz_state(service):
    channel = grpc.insecure_channel(service["address"])
    pool = ThreadPoolExecutor(max_workers=2)
    prefill_before = pool_stats(service["config"], "prefill")["num_prefilled"]
    yield {"channel": channel, "pool": pool, "replicas": replica_ids(service["config"]),
           "prefill_before": prefill_before, "outcomes": {}}
    pool.shutdown()
    channel.close()


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=requests)
@example(fields={"input": ("prompt", "x" * (1 << 20) + "y"), "max_tokens": 1, "temperature": None, "top_p": None,
                 "seed": None, "stop": [], "request_id": "", "invalid_utf8": None, "method": "GenerateUnary"})
@example(fields={"input": ("prompt", "\U0001F600" * 2_200_000), "max_tokens": 1, "temperature": None,
                 "top_p": None, "seed": None, "stop": [], "request_id": "", "invalid_utf8": None,
                 "method": "Generate"})
@example(fields={"input": ("prompt", "hi"), "max_tokens": 4, "temperature": 0.5, "top_p": None, "seed": 7,
                 "stop": ["a", "b"], "request_id": "", "invalid_utf8": ((7, "stop"), b"\xc3\x28"),
                 "method": "Generate"})
@example(fields={"input": ("prompt", "hi"), "max_tokens": 4, "temperature": None, "top_p": None, "seed": None,
                 "stop": [], "request_id": "ok", "invalid_utf8": ((8, "request_id"), b"\xff"),
                 "method": "GenerateUnary"})
@example(fields={"input": ("prompt", "hi"), "max_tokens": 4, "temperature": None, "top_p": None, "seed": None,
                 "stop": [], "request_id": "\u00e9" * 20_000, "invalid_utf8": None, "method": "Generate"})
@example(fields={"input": ("chat", []), "max_tokens": 4, "temperature": float("nan"), "top_p": None,
                 "seed": 2**64 - 1, "stop": [], "request_id": "dup-id", "invalid_utf8": None, "method": "Generate"})
def test_fuzzed_requests_get_precise_statuses_and_never_crash_a_replica(service, fuzz_state, fields):
    request, raw = encode(fields)
    # The same bytes twice at once: duplicate request ids in flight, and two identical answers when deterministic.
    first, second = fuzz_state["pool"].map(lambda _: call(fuzz_state["channel"], fields["method"], raw), range(2))
    invalid = obviously_invalid(request, fields)
    for code, details, responses in (first, second):
        fuzz_state["outcomes"][code] = fuzz_state["outcomes"].get(code, 0) + 1
        assert code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), (code, details, fields)
        if code == "INVALID_ARGUMENT":
            assert any(field in details for field in FIELDS + ("the request",)), details
        if invalid is not None:
            assert code == "INVALID_ARGUMENT" and invalid in details, (invalid, code, details)
        elif code == "OK":
            last = responses[-1]
            assert last.finish_reason in ("stop", "length") and last.usage.completion_tokens >= 1
            limit = request.max_tokens or 16  # the test config's default_max_tokens
            assert sum(len(r.token_ids) for r in responses) <= limit
            assert all(r.request_id == responses[0].request_id for r in responses)
            if request.request_id:
                assert responses[0].request_id == request.request_id
        elif code == "RESOURCE_EXHAUSTED":  # the context, a bound of the pools (two long prompts at once), or the
            #                                   request's size, refused by the proxy before it is read
            assert any(reason in details for reason in ("exceeds the context", "is full", "budget",
                                                        f"vs. {MAX_REQUEST_BYTES})")), details
            if "vs." in details:
                assert len(raw) > MAX_REQUEST_BYTES
    deterministic = not request.HasField("temperature") or request.temperature == 0 or request.HasField("seed")
    if first[0] == second[0] == "OK" and deterministic:
        assert tokens_of(first[2]) == tokens_of(second[2])


def tokens_of(responses) -> list[int]:
    return [t for r in responses for t in r.token_ids]


def test_after_the_fuzz_every_replica_is_the_same_healthy_one_and_no_kv_is_left(service, fuzz_state):
    config = service["config"]
    print("\nfuzz outcomes:", fuzz_state["outcomes"])
    assert fuzz_state["outcomes"].get("OK", 0) > 10 and fuzz_state["outcomes"].get("INVALID_ARGUMENT", 0) > 10
    assert replica_ids(config) == fuzz_state["replicas"]
    assert pool_stats(config, "prefill")["num_prefilled"] > fuzz_state["prefill_before"]  # same replica, counting on
    with OverFillClient(service["address"], timeout_s=DEADLINE_S) as client:
        assert client.health() == "SERVING"
        tokens = [t for piece in client.generate("still serving", max_tokens=10) for t in piece.token_ids]
    assert tokens == in_process(service, "still serving", 10)
    assert_no_kv_left(config)


def test_undecodable_requests_to_every_method_are_invalid_argument(service, fuzz_state):
    channel = fuzz_state["channel"]
    for method, request_class in (("Health", pb.HealthRequest), ("GetModelInfo", pb.ModelInfoRequest)):
        stub = channel.unary_unary(f"/overfill.v1.Generation/{method}", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as error:
            stub(b"\x0a\x05ab", timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in error.value.details()
        assert stub(b"", timeout=30)  # an empty message is a valid one
    code, details, _ = call(channel, "Generate", pb.GenerateRequest(prompt="hi", stop=["ab"]).SerializeToString()
                            .replace(b"ab", b"\xff\xfe"))
    assert (code, details) == ("INVALID_ARGUMENT", "stop[0] is not valid UTF-8")

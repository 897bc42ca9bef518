"""Request bytes protobuf refuses become an UnparsableRequest naming the field (INVALID_ARGUMENT, not UNKNOWN).
(Values at the edge of what validation accepts, such as tiny temperatures, are sampled in tests/test_sampling.py.)"""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overfill.request_parsing import MAX_FIELDS_EXPLAINED, UnparsableRequest, lenient_parser
from overfill.serving.types import ServiceError
from overfill.serving.validation import Limits, validate_request
from overfill.v1 import generation_pb2 as pb
from overfill.v1 import kv_transfer_pb2 as kv_pb

parse = lenient_parser(pb.GenerateRequest)


def with_bytes(request: pb.GenerateRequest, placeholder: str, raw: bytes) -> bytes:
    """The serialized request with a placeholder's UTF-8 bytes replaced by `raw` (same length keeps framing)."""
    encoded = request.SerializeToString()
    assert encoded.count(placeholder.encode()) == 1 and len(raw) == len(placeholder.encode())
    return encoded.replace(placeholder.encode(), raw)


@pytest.mark.parametrize("request_, placeholder, field", [
    (pb.GenerateRequest(prompt="hi", stop=["ok", "@@"]), "@@", "stop[1]"),
    (pb.GenerateRequest(prompt="@@"), "@@", "prompt"),
    (pb.GenerateRequest(prompt="hi", request_id="@@"), "@@", "request_id"),
    (pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="a"),
                                                       pb.ChatMessage(role="user", content="@@")])), "@@",
     "chat.messages[1].content"),
    (pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="@@", content="a")])), "@@",
     "chat.messages[0].role"),
])
@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0"])  # bad start, bad continuation, surrogate
def test_invalid_utf8_is_named_by_field(request_, placeholder, field, raw):
    parsed = parse(with_bytes(request_, placeholder, raw))
    assert parsed == UnparsableRequest("overfill.v1.GenerateRequest", f"{field} is not valid UTF-8")


@pytest.mark.parametrize("raw, message", [
    (b"\x0a\x05hi", "prompt is truncated (declares 5 bytes, 2 left)"),
    (b"\x3a", "stop[0] is truncated"),
    (b"\x18\xff", "max_tokens is truncated"),
    (b"\x25\x00\x00", "temperature is truncated"),
    (b"\x0f", "prompt has wire type 7, which is not valid protobuf"),
    (b"\x00", "the request: field number 0 is not valid protobuf"),
    (b"\x18" + b"\xff" * 11, "max_tokens holds a varint longer than 10 bytes"),
    (b"\x12\x04\x0a\x02\x0a\x09", "chat.messages[0].role is truncated (declares 9 bytes, 0 left)"),
])
def test_malformed_frames_are_named(raw, message):
    assert parse(raw) == UnparsableRequest("overfill.v1.GenerateRequest", message)


def test_a_malformed_frame_of_millions_of_fields_is_refused_without_walking_them():
    """8 MiB of one varint field repeated, then a truncated string: protobuf (C) refuses it at once, and the
    explanation stops after MAX_FIELDS_EXPLAINED fields instead of walking 4 million in Python on the server's loop."""
    raw = b"\x18\x01" * 4_190_000 + b"\x0a\x05ab"
    started = time.perf_counter()
    parsed = lenient_parser(pb.GenerateRequest, 16 << 20)(raw)
    elapsed_s = time.perf_counter() - started
    assert parsed == UnparsableRequest("overfill.v1.GenerateRequest", (
        f"the request is not a valid overfill.v1.GenerateRequest (its first {MAX_FIELDS_EXPLAINED} fields are well "
        f"formed; the fault lies after them)"))
    assert elapsed_s < 1.0  # walking every field took 4-17 s; the bounded walk takes milliseconds


def test_a_fault_within_the_explained_fields_is_still_named():
    raw = b"\x18\x01" * (MAX_FIELDS_EXPLAINED - 1) + b"\x0a\x05ab"
    assert parse(raw) == UnparsableRequest("overfill.v1.GenerateRequest",
                                           "prompt is truncated (declares 5 bytes, 2 left)")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(raw=st.one_of(st.binary(max_size=64),
                     st.builds(lambda r, cut: r[:cut], st.just(pb.GenerateRequest(
                         chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="x")]), stop=["a"],
                         temperature=0.5, seed=3, request_id="r").SerializeToString()), st.integers(0, 40))))
def test_lenient_parser_never_raises_and_agrees_with_protobuf(raw):
    for message_class in (pb.GenerateRequest, pb.HealthRequest, kv_pb.PullRequest):
        parsed = lenient_parser(message_class)(raw)
        try:
            expected = message_class.FromString(raw)
        except Exception:  # noqa: BLE001
            assert isinstance(parsed, UnparsableRequest) and parsed.message
        else:
            assert parsed == expected


def test_validate_request_refuses_unparsable_requests_as_invalid_argument():
    limits = Limits(max_context_tokens=64, max_tokens_limit=32, default_max_tokens=8)
    with pytest.raises(ServiceError) as error:
        validate_request(UnparsableRequest("overfill.v1.GenerateRequest", "stop[0] is not valid UTF-8"), None, limits)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", "stop[0] is not valid UTF-8")


def test_the_ingress_registers_every_rpc_of_the_generation_service_leniently():
    from services.router.grpc_handlers import MAX_REQUEST_BYTES, SERVICE_NAME, add_generation_servicer

    class Recorder:
        def add_generic_rpc_handlers(self, handlers):
            self.generic = handlers[0]

        def add_registered_method_handlers(self, name, handlers):
            self.name, self.handlers = name, handlers

    class Servicer:
        def __getattr__(self, name):
            return lambda request, context: None

    server = Recorder()
    add_generation_servicer(Servicer(), server)
    service = pb.DESCRIPTOR.services_by_name["Generation"]
    assert server.name == SERVICE_NAME == service.full_name
    assert set(server.handlers) == {m.name for m in service.methods}  # a new RPC in the proto must be added here
    for method in service.methods:
        handler = server.handlers[method.name]
        assert handler.response_streaming == method.server_streaming
        assert isinstance(handler.request_deserializer(b"\xff"), UnparsableRequest)
        too_big = handler.request_deserializer(bytes(MAX_REQUEST_BYTES + 1))
        assert isinstance(too_big, UnparsableRequest) and f"more than the {MAX_REQUEST_BYTES} accepted" in too_big.message


class NeverTokenize:
    """A tokenizer that fails the test if a request gets as far as rendering or tokenizing."""

    chat_template = "{{ messages }}"

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenized a text that could not fit")

    def apply_chat_template(self, *args, **kwargs):
        raise AssertionError("rendered a chat that could not fit")


def chat_of(*contents: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=c) for c in contents]))


def test_a_text_too_long_to_fit_is_refused_before_tokenizing():
    """The tiny models' tokenizer is byte-level BPE with no normalizer, so a token covers at most its longest
    vocabulary entry, 13 characters: a text over 13 x the tokens left cannot fit, and a chat whose contents alone
    cannot fit is refused before its template is rendered."""
    from overfill.serving.validation import max_token_chars

    limits = Limits(max_context_tokens=64, max_tokens_limit=32, default_max_tokens=8, max_token_chars=13)
    for request, field in [(pb.GenerateRequest(prompt="x" * (13 * 56 + 1)), "prompt"),
                           (pb.GenerateRequest(prompt="x" * (13 * 34 + 1), max_tokens=30), "prompt"),
                           (chat_of("x" * (13 * 28), "y" * (13 * 28 + 1)), "chat")]:
        with pytest.raises(ServiceError) as error:
            validate_request(request, NeverTokenize(), limits)
        assert error.value.code == "RESOURCE_EXHAUSTED" and f"{field} (" in error.value.message
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    assert max_token_chars(tokenizer) == 13
    ok = validate_request(pb.GenerateRequest(prompt="hello " * 5), tokenizer, limits)  # short texts still tokenize
    assert ok.prompt_ids == tokenizer("hello " * 5)["input_ids"]


def test_a_normalizing_tokenizer_is_allowed_more_characters_per_token():
    from types import SimpleNamespace

    from overfill.serving.validation import CHARS_PER_TOKEN_SLACK, max_token_chars

    from tokenizers.pre_tokenizers import ByteLevel, Whitespace

    vocab = {"a": 0, "abcd": 1}

    def tokenizer(**backend):
        return SimpleNamespace(get_vocab=lambda: vocab, backend_tokenizer=SimpleNamespace(**backend))

    assert max_token_chars(tokenizer(normalizer=None, pre_tokenizer=ByteLevel())) == 4
    normalizing = tokenizer(normalizer=object(), pre_tokenizer=ByteLevel())
    dropping = tokenizer(normalizer=None, pre_tokenizer=Whitespace())  # not byte-level: the slack, at least
    slow = SimpleNamespace(get_vocab=lambda: vocab)  # a Python tokenizer: whatever it does, unseen
    assert {max_token_chars(t) for t in (normalizing, dropping, slow)} == {4 * CHARS_PER_TOKEN_SLACK}


def test_a_660k_character_prompt_to_the_default_model_is_refused_before_tokenizing():
    """The default model's tokenizer (longest entry 81 characters, no normalizer) under the default limits leaves
    at most 81 x 2047 characters; a 660K-character prompt was tokenized in full (about a second) to be refused."""
    limits = Limits(max_context_tokens=2048, max_tokens_limit=1024, default_max_tokens=128, max_token_chars=81)
    started = time.perf_counter()
    with pytest.raises(ServiceError) as error:
        validate_request(pb.GenerateRequest(prompt="a" * 660_000, max_tokens=1), NeverTokenize(), limits)
    assert error.value.code == "RESOURCE_EXHAUSTED" and "prompt (660000 characters)" in error.value.message
    assert time.perf_counter() - started < 0.1


def test_a_chat_is_bounded_in_messages_and_characters_before_it_is_rendered():
    limits = Limits(max_context_tokens=64, max_tokens_limit=32, default_max_tokens=8, max_prompt_chars=100,
                    max_chat_messages=4)
    many = pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user")] * 300_000))
    started = time.perf_counter()
    with pytest.raises(ServiceError) as error:
        validate_request(many, NeverTokenize(), limits)
    assert time.perf_counter() - started < 0.5
    assert (error.value.code, error.value.message) == (
        "INVALID_ARGUMENT", "chat.messages holds 300000 messages, more than the 4 accepted")
    with pytest.raises(ServiceError) as error:
        validate_request(chat_of("x" * 60, "y" * 41), NeverTokenize(), limits)
    assert (error.value.code, error.value.message) == (
        "INVALID_ARGUMENT", "chat.messages[].content has 101 characters in all, more than the 100 accepted")
    with pytest.raises(ServiceError) as error:
        validate_request(pb.GenerateRequest(prompt="z" * 101), NeverTokenize(), limits)
    assert (error.value.code, error.value.message) == (
        "INVALID_ARGUMENT", "prompt has 101 characters, more than the 100 accepted")


def test_the_tokenizer_queue_refuses_at_once_when_full_and_counts_until_the_work_is_done():
    import asyncio
    import threading

    from overfill.serving.tokenizer_queue import TokenizerQueue

    queue, tokenizer_free = TokenizerQueue(max_queued=2), threading.Event()

    async def run():
        first = asyncio.create_task(queue.run(tokenizer_free.wait))
        waiting = asyncio.create_task(queue.run(lambda: "tokenized"))
        await asyncio.sleep(0)
        assert queue.num_queued == 2
        with pytest.raises(ServiceError) as error:
            await queue.run(lambda: "never")
        assert error.value.code == "RESOURCE_EXHAUSTED" and error.value.message == (
            "the tokenizer queue is full: 2 requests are being tokenized or waiting (server.max_tokenizer_queue = 2)")
        waiting.cancel()  # its caller left before its turn: it leaves the queue without running
        await asyncio.gather(waiting, return_exceptions=True)
        assert queue.num_queued == 1
        first.cancel()  # its caller left while it runs: its place is held until the thread is done with it
        await asyncio.gather(first, return_exceptions=True)
        assert queue.num_queued == 1
        tokenizer_free.set()
        assert await queue.run(lambda: "after") == "after"
        return queue.num_queued

    assert asyncio.run(run()) == 0
    queue.close()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=st.text(max_size=300))
def test_no_token_covers_more_characters_than_its_vocabulary_entry(text):
    """What the length pre-check rests on, for the byte-level BPE of the tests' models (no normalizer)."""
    from overfill.serving.validation import max_token_chars
    from tests.tiny import tiny_tokenizer

    tokenizer = _TOKENIZER.setdefault("tiny", tiny_tokenizer())
    assert len(tokenizer(text)["input_ids"]) * max_token_chars(tokenizer) >= len(text)


_TOKENIZER: dict = {}


def test_token_ids_in_and_out_are_checked_against_the_vocabulary():
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    vocab_size = len(tokenizer)
    limits = Limits(max_context_tokens=64, max_tokens_limit=32, default_max_tokens=8)
    valid = validate_request(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5, 6, 7]), stop_token_ids=[9, 4],
                                                ignore_eos=True), tokenizer, limits)
    assert valid.prompt_ids == [5, 6, 7]
    assert valid.sampling.stop_token_ids == (9, 4) and valid.sampling.ignore_eos
    refusals = [
        (pb.GenerateRequest(prompt_token_ids=pb.TokenIds()), "INVALID_ARGUMENT", "prompt_token_ids.ids is empty"),
        (pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[1, vocab_size])), "INVALID_ARGUMENT",
         f"prompt_token_ids.ids[1] = {vocab_size} is not a token id of the model (its vocabulary has {vocab_size})"),
        (pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[1] * 65)), "RESOURCE_EXHAUSTED",
         "prompt_token_ids holds 65 tokens, more than the context of 64 tokens"),
        (pb.GenerateRequest(prompt="hi", stop_token_ids=[1] * 33), "INVALID_ARGUMENT",
         "stop_token_ids may hold at most 32 ids, got 33"),
        (pb.GenerateRequest(prompt="hi", stop_token_ids=[3, 2**31]), "INVALID_ARGUMENT",
         f"stop_token_ids[1] = {2**31} is not a token id of the model (its vocabulary has {vocab_size})"),
    ]
    for request, code, message in refusals:
        with pytest.raises(ServiceError) as error:
            validate_request(request, tokenizer, limits)
        assert (error.value.code, error.value.message) == (code, message)


def test_logprobs_is_unset_or_0_to_20():
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    limits = Limits(max_context_tokens=64, max_tokens_limit=32, default_max_tokens=8)
    assert validate_request(pb.GenerateRequest(prompt="hi"), tokenizer, limits).sampling.logprobs is None
    assert validate_request(pb.GenerateRequest(prompt="hi", logprobs=0), tokenizer, limits).sampling.logprobs == 0
    assert validate_request(pb.GenerateRequest(prompt="hi", logprobs=20), tokenizer, limits).sampling.logprobs == 20
    with pytest.raises(ServiceError) as error:
        validate_request(pb.GenerateRequest(prompt="hi", logprobs=21), tokenizer, limits)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", "logprobs must be in [0, 20], got 21")

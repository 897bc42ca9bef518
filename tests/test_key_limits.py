"""Per-API-key concurrency (overfill/serving/key_limits.py) without Ray: the count, the refusal naming the limit,
its release however a request ends (finish, error, cancellation, a client gone), who the caller is (the key's
digest, overfill/serving/auth.py), the config field, and the HTTP schema's cap on a chat's messages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest

from overfill.serving.auth import ApiKeyChecker
from overfill.serving.config import ConfigError, ServiceConfig
from overfill.serving.key_limits import KeyConcurrency
from overfill.serving.openai_errors import FieldError, openai_error
from overfill.serving.openai_schema import ChatCompletionRequest, parse_request
from overfill.serving.types import ServiceError
from overfill.status import StatusCode

KEY_A, KEY_B = b"digest-of-key-a", b"digest-of-key-b"


def assert_nothing_held(limits: KeyConcurrency) -> None:
    assert limits.num_keys == 0 and limits.num_in_flight(KEY_A) == 0 and limits.num_in_flight(KEY_B) == 0


def test_a_key_past_its_limit_is_refused_naming_the_field_while_another_key_is_served():
    limits = KeyConcurrency(2)
    with limits.held(KEY_A), limits.held(KEY_A):
        with pytest.raises(ServiceError) as error:
            with limits.held(KEY_A):
                pass
        assert error.value.code == StatusCode.RESOURCE_EXHAUSTED
        assert "auth.max_requests_per_key = 2" in error.value.message and "per router replica" in error.value.message
        assert openai_error(error.value)[0] == 429
        with limits.held(KEY_B):  # another key is not affected
            assert limits.num_in_flight(KEY_B) == 1 and limits.num_in_flight(KEY_A) == 2
        assert limits.num_in_flight(KEY_A) == 2  # the refusal took no place
    assert_nothing_held(limits)


def test_no_limit_and_no_key_are_never_counted():
    unlimited = KeyConcurrency(0)
    nested = [unlimited.held(KEY_A) for _ in range(100)]
    for guard in nested:
        guard.__enter__()
    assert unlimited.num_keys == 0
    for guard in reversed(nested):
        guard.__exit__(None, None, None)
    with KeyConcurrency(1).held(None), KeyConcurrency(1).held(None):  # API keys off
        pass
    with pytest.raises(ValueError, match="max_per_key must be >= 0"):
        KeyConcurrency(-1)


def test_the_place_is_given_back_on_error():
    limits = KeyConcurrency(1)
    with pytest.raises(RuntimeError):
        with limits.held(KEY_A):
            raise RuntimeError("prefill failed")
    assert_nothing_held(limits)


async def generation(limits: KeyConcurrency, key_id: bytes, started: asyncio.Event, num_pieces: int = 1_000):
    """The shape of the router's observed_generate: the place is held across the yields of an async generator."""
    with limits.held(key_id):
        for piece in range(num_pieces):
            started.set()
            await asyncio.sleep(0)
            yield piece


def test_the_place_is_given_back_when_the_stream_finishes_is_closed_or_cancelled():
    async def scenario():
        limits = KeyConcurrency(1)
        # 1) Finished: every piece read.
        assert [p async for p in generation(limits, KEY_A, asyncio.Event(), num_pieces=3)] == [0, 1, 2]
        assert_nothing_held(limits)
        # 2) Closed after the first piece (the HTTP API's aclosing when a client disconnects).
        stream = generation(limits, KEY_A, asyncio.Event())
        assert await anext(stream) == 0 and limits.num_in_flight(KEY_A) == 1
        await stream.aclose()
        assert_nothing_held(limits)
        # 3) The task consuming it cancelled mid-stream (a gRPC cancel or deadline).
        started = asyncio.Event()

        async def consume():
            async with contextlib.aclosing(generation(limits, KEY_A, started)) as pieces:
                async for _ in pieces:
                    await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        await started.wait()
        assert limits.num_in_flight(KEY_A) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_nothing_held(limits)

    asyncio.run(scenario())


def test_the_caller_is_the_digest_of_the_accepted_key_and_refusals_name_none():
    keys = ["key-a-0123456789abcdef", "key-b-0123456789abcdef"]
    checker = ApiKeyChecker(keys)
    for key in keys:
        verdict = checker.check([("authorization", f"Bearer {key}")])
        assert verdict.refusal is None and verdict.key_id == hashlib.sha256(key.encode()).digest()
    assert checker.check([]) == ("missing", None)
    assert checker.check([("authorization", "Basic x")]) == ("malformed", None)
    assert checker.check([("authorization", "Bearer wrong-key-0123456789")]) == ("invalid", None)
    assert checker.refusal([("authorization", f"Bearer {keys[0]}")]) is None


def test_the_config_field_is_validated_by_name():
    config = ServiceConfig()
    assert config.auth.max_requests_per_key == 0  # no limit unless configured
    config.auth.max_requests_per_key = -1
    with pytest.raises(ConfigError, match=r"auth\.max_requests_per_key"):
        config.validate()


def test_the_http_schema_refuses_a_long_chat_before_parsing_its_messages():
    body = {"model": "m", "messages": [{}] * 300_000}  # empty objects: each one would fail if it were parsed
    with pytest.raises(FieldError) as error:
        parse_request(ChatCompletionRequest, body, "m", max_chat_messages=1024)
    assert error.value.param == "messages" and error.value.code == StatusCode.INVALID_ARGUMENT
    assert "300000 messages, more than the 1024 accepted (server.max_chat_messages)" in error.value.message
    assert openai_error(error.value)[0] == 400
    fits = {"model": "m", "messages": [{"role": "user", "content": "hi"}] * 4}
    assert len(parse_request(ChatCompletionRequest, fits, "m", max_chat_messages=4).messages) == 4
    with pytest.raises(FieldError, match="8 messages, more than the 4 accepted"):
        parse_request(ChatCompletionRequest, {**fits, "messages": fits["messages"] * 2}, "m", max_chat_messages=4)

"""The public front doors of a running service (one tiny application for the module, API keys on): the
OpenAI-compatible HTTP API driven by the official `openai` SDK, its text against the gRPC API's for the same greedy
request, errors in OpenAI's shape with their HTTP statuses, keys, and the standard gRPC services on the gRPC port
(grpc.health.v1 with a stock client, server reflection)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import pytest

from overfill.client import OverFillClient
from tests.service_helpers import assert_no_kv_left, pool_stats, serve_file_for_tests, tiny_service

pytestmark = pytest.mark.service

KEY = "openai-test-key-0123456789"
KEYS_ENV = "OVERFILL_OPENAI_TEST_KEYS"
MODEL = "tiny-overfill"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS_LIMIT = 512  # room for a stream that lasts seconds (the disconnect test)


@pytest.fixture(scope="module")
def service(service_models):
    serve_file = serve_file_for_tests(env_vars={KEYS_ENV: KEY})
    with tiny_service(service_models, "auth.enabled=true", f"auth.api_keys_env={KEYS_ENV}",
                      f"server.served_model_name={MODEL}", "server.max_context_tokens=1024",
                      f"server.max_tokens_limit={MAX_TOKENS_LIMIT}", serve_file=serve_file) as service:
        yield {**service, "http": f"http://127.0.0.1:{service['config'].server.http_port}"}


@pytest.fixture(scope="module")
def openai_client(service):
    import openai

    with openai.OpenAI(base_url=f"{service['http']}/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        yield client


def grpc_text(service, **request) -> tuple[str, int, str]:
    """(text, completion tokens, finish reason) of the gRPC API for the same request."""
    with OverFillClient(service["address"], api_key=KEY, timeout_s=60) as client:
        reply = client.generate_unary(**request)
    return reply.text, len(reply.token_ids), reply.finish_reason


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET, errors included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_chat_streamed_and_whole_equal_the_grpc_api(service, openai_client):
    text, num_tokens, finish = grpc_text(service, messages=MESSAGES, max_tokens=12)
    stream = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == num_tokens

    raw = openai_client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES,
                                                                  max_completion_tokens=12)
    whole = raw.parse()
    assert whole.choices[0].message.content == text and whole.choices[0].finish_reason == finish
    assert whole.usage.completion_tokens == num_tokens and whole.usage.prompt_tokens > 0
    assert whole.id == f"chatcmpl-{raw.headers['x-request-id']}" and whole.model == MODEL
    assert_no_kv_left(service["config"])


def test_completions_with_stop_and_top_k_equal_the_grpc_api(service, openai_client):
    prompt = "one two three"
    text, num_tokens, _ = grpc_text(service, prompt=prompt, max_tokens=16)
    whole = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=16)
    assert whole.choices[0].text == text and whole.usage.completion_tokens == num_tokens
    streamed = list(openai_client.completions.create(  # guidellm's stream_options (vLLM's continuous usage)
        model=MODEL, prompt=prompt, max_tokens=16, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    counts = [c.usage.completion_tokens for c in streamed]
    assert counts == sorted(counts) and counts[-1] == num_tokens and streamed[-1].choices == []
    assert {c.usage.prompt_tokens for c in streamed} == {whole.usage.prompt_tokens}
    # top_k 1 samples the most likely token: greedy, whatever the temperature and seed.
    top_1 = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=1.5, seed=3,
                                             extra_body={"top_k": 1})
    assert top_1.choices[0].text == text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    stopped = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, stop=[stop])
    assert stopped.choices[0].text == grpc_text(service, prompt=prompt, max_tokens=16, stop=[stop])[0]
    assert stopped.choices[0].text == text[:text.find(stop)] and stopped.choices[0].finish_reason == "stop"
    assert_no_kv_left(service["config"])


def test_logprobs_over_http_equal_the_grpc_apis(service, openai_client):
    """Greedy, so each token is its position's most likely: its logprob is the first alternative's. The first token's
    comes from the full model, the rest from the decoder, as the gRPC API reports them."""
    with OverFillClient(service["address"], api_key=KEY, timeout_s=60) as client:
        reply = client.generate_unary(messages=MESSAGES, max_tokens=10, logprobs=2)
    assert len(reply.logprobs) == len(reply.token_ids) and [e.token_id for e in reply.logprobs] == list(reply.token_ids)
    assert all(e.top_logprobs[0].token_id == e.token_id and e.top_logprobs[0].logprob == e.logprob
               and len(e.top_logprobs) == 2 and e.logprob <= 0 for e in reply.logprobs)
    expected = [(e.token, pytest.approx(e.logprob, abs=1e-5)) for e in reply.logprobs]
    whole = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, logprobs=True,
                                                  top_logprobs=2)
    assert [(e.token, e.logprob) for e in whole.choices[0].logprobs.content] == expected
    assert all(len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in whole.choices[0].logprobs.content)
    streamed = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, logprobs=True,
                                                     top_logprobs=2, stream=True)
    assert [(e.token, e.logprob) for c in streamed for e in c.choices[0].logprobs.content] == expected
    completion = openai_client.completions.create(model=MODEL, prompt="one two three", max_tokens=6, logprobs=1)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == completion.usage.completion_tokens == len(logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0 and all(len(top) == 1 for top in logprobs.top_logprobs)
    assert_no_kv_left(service["config"])


def test_token_id_prompts_stop_token_ids_and_ignore_eos_over_http(service, openai_client):
    with OverFillClient(service["address"], api_key=KEY, timeout_s=60) as client:
        ids = list(client.generate_unary(prompt="one two three", max_tokens=8, ignore_eos=True).token_ids)
        prompt_ids = [5, 9, 12, 7, 3]
        by_ids = client.generate_unary(prompt_token_ids=prompt_ids, max_tokens=8)
    text, num_tokens, _ = grpc_text(service, prompt="one two three", max_tokens=8, ignore_eos=True)
    ignoring = openai_client.completions.create(model=MODEL, prompt="one two three", max_tokens=8,
                                                extra_body={"ignore_eos": True})
    assert (ignoring.choices[0].text, ignoring.usage.completion_tokens) == (text, num_tokens) == (text, 8)
    stopped = openai_client.completions.create(model=MODEL, prompt="one two three", max_tokens=8,
                                               extra_body={"stop_token_ids": [ids[2]], "ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == ids.index(ids[2]) + 1  # the stop token is the last one
    for prompt in (prompt_ids, [prompt_ids]):
        completion = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=8)
        assert completion.choices[0].text == by_ids.text and completion.usage.prompt_tokens == len(prompt_ids)
    assert_no_kv_left(service["config"])


@pytest.mark.parametrize("fields, param, code", [
    (dict(temperature=-1.0), None, "invalid_argument"),             # refused by the gRPC API's own validation
    (dict(max_tokens=MAX_TOKENS_LIMIT + 1), None, "invalid_argument"),  # over server.max_tokens_limit
    (dict(n=2), "n", "invalid_argument"),
    (dict(logprobs=True, top_logprobs=21), "top_logprobs", "invalid_argument"),
    (dict(extra_body={"tools": []}), "tools", "invalid_argument"),
    (dict(messages=[{"role": "user", "content": "word " * 250}], max_tokens=64), None,
     "context_length_exceeded"),  # 1266 prompt tokens
])
def test_a_bad_field_is_a_400_in_openai_error_json(service, openai_client, fields, param, code):
    import openai

    fields = {"model": MODEL, "messages": MESSAGES, **fields}
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.chat.completions.create(**fields)
    body = error.value.response.json()
    assert error.value.status_code == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["param"], body["error"]["code"], body["error"]["type"]) == (param,
                                                                                      code, "invalid_request_error")
    if param:
        assert param in body["error"]["message"]


def test_models_keys_health_and_unknown_paths(service, openai_client):
    import openai

    (model,) = openai_client.models.list().data
    assert model.id == MODEL and model.overfill["decoder_hidden_size"] == 48
    assert 0 < model.overfill["decoder_parameters"] < model.overfill["full_parameters"]  # numbers, not strings
    assert openai_client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as error:
        openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert error.value.response.json()["error"]["code"] == "model_not_found"
    with openai.OpenAI(base_url=f"{service['http']}/v1", api_key="wrong-key-" + "7" * 16, max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as error:
            wrong.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert error.value.response.json()["error"] == {"message": "invalid API key", "type": "authentication_error",
                                                    "param": None, "code": "invalid_api_key"}
    status, body, _ = http_get(f"{service['http']}/v1/models")  # no key at all
    assert status == 401 and body["error"]["message"].startswith("missing API key")
    status, body, headers = http_get(f"{service['http']}/health", {"x-request-id": "probe-1"})  # probes need no key
    assert (status, body["status"], headers["x-request-id"]) == (200, "SERVING", "probe-1")
    status, body, _ = http_get(f"{service['http']}/v1/embeddings", {"authorization": f"Bearer {KEY}"})
    assert status == 404 and body["error"]["type"] == "not_found_error"


def test_a_client_that_disconnects_mid_stream_cancels_decode_and_frees_the_kv(service, openai_client):
    finished_before = pool_stats(service["config"], "decode")["num_finished"]
    stream = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS_LIMIT,
                                                   temperature=1.0, seed=1, stream=True)  # seconds of tokens
    pieces = iter(stream)
    next(pieces), next(pieces)
    stream.close()  # the HTTP connection goes away mid-stream
    assert_no_kv_left(service["config"])
    assert pool_stats(service["config"], "decode")["num_finished"] == finished_before  # cut, not run to its end


def test_grpc_health_and_reflection_on_the_grpc_port(service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(service["address"]) as channel:
        health = health_pb2_grpc.HealthStub(channel)  # a stock client: no key, no Serve metadata
        for name in ("", "overfill.v1.Generation"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=30).status == serving
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == serving
        watch.cancel()
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"overfill.v1.Generation", "grpc.health.v1.Health"} <= services

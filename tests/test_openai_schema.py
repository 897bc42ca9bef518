"""The OpenAI-compatible API's translation layer without a service: request bodies to the gRPC API's
GenerateRequest, refusals naming the field, the one status mapping, and replies built from GenerateResponses."""

from __future__ import annotations

import json

import pytest

from overfill.serving.openai_errors import HTTP_STATUS, FieldError, openai_error
from overfill.serving.openai_schema import ChatCompletionRequest, CompletionRequest, ReplyBuilder, parse_request
from overfill.serving.types import ContextLengthExceeded, ServiceError
from overfill.status import StatusCode
from overfill.v1 import generation_pb2 as pb

MODEL = "tiny"


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_a_chat_body_becomes_the_grpc_request():
    body = chat(messages=[{"role": "developer", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                max_tokens=9, max_completion_tokens=7, temperature=0.5, top_p=0.9, top_k=4, seed=11, stop="\n",
                user="someone")
    request = parse_request(ChatCompletionRequest, body, MODEL).to_generate_request("rid-1")
    assert [(m.role, m.content) for m in request.chat.messages] == [("system", "be brief"), ("user", "ab")]
    assert request.max_tokens == 7  # max_completion_tokens wins over the older max_tokens
    assert (request.temperature, request.top_k, request.seed, list(request.stop)) == (0.5, 4, 11, ["\n"])
    assert request.top_p == pytest.approx(0.9) and request.request_id == "rid-1"


def test_unset_fields_stay_unset_so_the_service_defaults_apply():
    request = parse_request(CompletionRequest, {"model": MODEL, "prompt": ["one"], "top_k": -1}, MODEL)
    generate = request.to_generate_request("r")
    assert generate.prompt == "one" and generate.max_tokens == 0
    assert not any(generate.HasField(f) for f in ("temperature", "top_p", "top_k", "seed"))


def test_vllm_extensions_logprobs_and_token_id_prompts_reach_the_grpc_request():
    chat_request = parse_request(ChatCompletionRequest, chat(logprobs=True, top_logprobs=3, stop_token_ids=[5, 9],
                                                             ignore_eos=True), MODEL).to_generate_request("r")
    assert chat_request.logprobs == 3 and list(chat_request.stop_token_ids) == [5, 9] and chat_request.ignore_eos
    assert parse_request(ChatCompletionRequest, chat(logprobs=True), MODEL).to_generate_request("r").logprobs == 0
    assert not parse_request(ChatCompletionRequest, chat(logprobs=False), MODEL).to_generate_request(
        "r").HasField("logprobs")
    for prompt in ([7, 8, 9], [[7, 8, 9]]):
        request = parse_request(CompletionRequest, {"model": MODEL, "prompt": prompt, "logprobs": 0},
                                MODEL).to_generate_request("r")
        assert list(request.prompt_token_ids.ids) == [7, 8, 9] and request.HasField("logprobs")
        assert request.logprobs == 0


@pytest.mark.parametrize("schema, body, param, words", [
    (ChatCompletionRequest, chat(n=2), "n", "n must be 1"),
    (ChatCompletionRequest, chat(top_logprobs=2), "top_logprobs", "needs logprobs set to true"),
    (ChatCompletionRequest, chat(logprobs=True, top_logprobs=21), "top_logprobs", "less than or equal to 20"),
    (ChatCompletionRequest, chat(stop_token_ids=[-1]), "stop_token_ids", "token ids must be integers >= 0"),
    (ChatCompletionRequest, chat(tools=[]), "tools", "not a supported field"),
    (ChatCompletionRequest, chat(stream_options={"include_usage": True}), "stream_options", "only allowed when"),
    (ChatCompletionRequest, chat(presence_penalty=0.5), "presence_penalty", "only 0"),
    (ChatCompletionRequest, chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (ChatCompletionRequest, chat(max_completion_tokens=1 << 40), "max_completion_tokens", "less than or equal"),
    (ChatCompletionRequest, chat(top_k=1 << 40), "top_k", "less than or equal"),
    (ChatCompletionRequest, chat(temperature="hot"), "temperature", "valid number"),
    (ChatCompletionRequest, chat(seed=-1), "seed", "greater than or equal to 0"),
    (ChatCompletionRequest, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content", ""),
    (ChatCompletionRequest, {"model": MODEL}, "messages", "messages is required"),
    (CompletionRequest, {"model": MODEL, "prompt": [[1, 2], [3]]}, "prompt", "2 prompts"),
    (CompletionRequest, {"model": MODEL, "prompt": ["a", "b"]}, "prompt", "2 prompts"),
    (CompletionRequest, {"model": MODEL, "prompt": [4, -1]}, "prompt", "token ids must be integers >= 0"),
    (CompletionRequest, {"model": MODEL, "prompt": "a", "logprobs": 21}, "logprobs", "less than or equal to 20"),
    (CompletionRequest, {"model": MODEL, "prompt": "a", "echo": True}, "echo", "not supported"),
])
def test_bad_fields_are_refused_naming_the_field(schema, body, param, words):
    with pytest.raises(FieldError) as error:
        parse_request(schema, body, MODEL).to_generate_request("r")
    assert error.value.code == StatusCode.INVALID_ARGUMENT and error.value.param == param
    assert words in error.value.message
    assert openai_error(error.value)[0] == 400


def test_an_unknown_model_is_404_model_not_found_and_a_non_object_body_400():
    with pytest.raises(FieldError) as error:
        parse_request(ChatCompletionRequest, chat(model="gpt-4o"), MODEL)
    status, body = openai_error(error.value)
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    with pytest.raises(FieldError) as error:
        parse_request(ChatCompletionRequest, [1], MODEL)
    assert openai_error(error.value)[0] == 400


@pytest.mark.parametrize("error, status, code", [
    (ServiceError(StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1], got 2"), 400, "invalid_argument"),
    (ServiceError(StatusCode.UNAUTHENTICATED, "invalid API key"), 401, "invalid_api_key"),
    (ServiceError(StatusCode.RESOURCE_EXHAUSTED, "a pool's queue is full"), 429, "resource_exhausted"),
    (ContextLengthExceeded("prompt (300 tokens) + max_tokens (16) exceeds the context"), 400,
     "context_length_exceeded"),
    (ServiceError(StatusCode.UNAVAILABLE, "a replica died"), 503, "unavailable"),
    (ServiceError(StatusCode.DEADLINE_EXCEEDED, "too slow"), 504, "deadline_exceeded"),
    (ServiceError(StatusCode.INTERNAL, "internal error (request_id r): ValueError"), 500, "internal"),
])
def test_statuses_map_to_http_and_openai_error_json(error, status, code):
    got_status, body = openai_error(error)
    assert got_status == status
    assert body == {"error": {"message": error.message, "type": body["error"]["type"], "param": None, "code": code}}
    assert json.loads(json.dumps(body)) == body


def test_every_status_code_has_an_http_status():
    assert set(HTTP_STATUS) == set(StatusCode)


def pieces() -> list[pb.GenerateResponse]:
    usage = pb.Usage(prompt_tokens=5, completion_tokens=3)
    return [pb.GenerateResponse(text="Hel", token_ids=[1], request_id="r", usage=pb.Usage(prompt_tokens=5)),
            pb.GenerateResponse(text="", token_ids=[2], request_id="r"),  # a character not complete yet
            pb.GenerateResponse(text="lo", token_ids=[3], finish_reason="length", usage=usage, request_id="r")]


def test_chat_chunks_name_the_role_first_and_usage_last_only_when_asked():
    builder = ReplyBuilder("chat", "r", MODEL, include_usage=True)
    chunks = [json.loads(builder.chunk_json(c)) for p in pieces() for c in builder.chunks(p)]
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": "Hel"},
                                                             {"content": "lo"}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:2]] == [None, "length"]
    assert chunks[2]["choices"] == [] and chunks[2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3,
                                                                  "total_tokens": 8}
    assert all(c["usage"] is None for c in chunks[:2]) and {c["id"] for c in chunks} == {"chatcmpl-r"}
    plain = ReplyBuilder("chat", "r", MODEL)
    assert all("usage" not in json.loads(plain.chunk_json(c)) for p in pieces() for c in plain.chunks(p))


def test_whole_completion_carries_text_finish_reason_and_usage():
    reply = ReplyBuilder("completion", "r", MODEL).whole(pieces()).model_dump()
    assert reply["id"] == "cmpl-r" and reply["object"] == "text_completion"
    assert reply["choices"] == [{"index": 0, "text": "Hello", "finish_reason": "length", "logprobs": None}]
    assert reply["usage"]["total_tokens"] == 8


def with_logprobs(piece: pb.GenerateResponse, tokens: list[str]) -> pb.GenerateResponse:
    """`piece` with an entry per token id: token text `tokens[i]`, logprob -i, one alternative."""
    for token_id, (i, token) in zip(piece.token_ids, enumerate(tokens)):
        piece.logprobs.append(pb.TokenLogprob(token_id=token_id, token=token, logprob=-i, top_logprobs=[
            pb.TopLogprob(token_id=token_id, token=token, logprob=-i)]))
    return piece


def test_logprobs_in_openais_chat_and_completion_shapes_streamed_and_whole():
    texts = [["Hel"], ["\u00e9"], ["lo"]]  # the middle piece: text not complete yet, a token all the same
    logged = [with_logprobs(piece, tokens) for piece, tokens in zip(pieces(), texts)]
    chat_builder = ReplyBuilder("chat", "r", MODEL, logprobs=True)
    chunks = [json.loads(chat_builder.chunk_json(c)) for p in logged for c in chat_builder.chunks(p)]
    content = [entry for c in chunks for entry in c["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in content] == ["Hel", "\u00e9", "lo"]  # the empty middle piece is not dropped
    assert content[1] == {"token": "\u00e9", "logprob": 0.0, "bytes": [0xC3, 0xA9],
                          "top_logprobs": [{"token": "\u00e9", "logprob": 0.0, "bytes": [0xC3, 0xA9]}]}
    completion = ReplyBuilder("completion", "r", MODEL, logprobs=True)
    streamed = [c.choices[0].logprobs for p in logged for c in completion.chunks(p)]
    assert [offset for lp in streamed for offset in lp.text_offset] == [0, 3, 4]
    whole = ReplyBuilder("completion", "r", MODEL, logprobs=True).whole(logged).model_dump()
    assert whole["choices"][0]["logprobs"] == {"tokens": ["Hel", "\u00e9", "lo"], "token_logprobs": [0.0, 0.0, 0.0],
                                               "top_logprobs": [{"Hel": 0.0}, {"\u00e9": 0.0}, {"lo": 0.0}],
                                               "text_offset": [0, 3, 4]}
    assert ReplyBuilder("chat", "r", MODEL).whole(logged).choices[0].logprobs is None  # not asked for


def test_continuous_usage_stats_give_every_chunk_the_usage_so_far():
    body = parse_request(CompletionRequest, {"model": MODEL, "prompt": "a", "stream": True, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}}, MODEL)  # what guidellm sends
    builder = ReplyBuilder("completion", "r", MODEL, body.include_usage, continuous_usage=body.continuous_usage)
    chunks = [json.loads(builder.chunk_json(c)) for p in pieces() for c in builder.chunks(p)]
    assert [(c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"]) for c in chunks] == [(5, 1), (5, 3), (5, 3)]
    assert [c["choices"][0]["text"] for c in chunks[:2]] == ["Hel", "lo"] and chunks[2]["choices"] == []

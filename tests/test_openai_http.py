"""The HTTP API's ASGI app (services/router/openai_http.py) without Ray: driven over ASGI in process, in front of a
scripted router, for what a live service cannot be made to do on demand (a failure after a stream began, a bug in
the router) and for the edges every endpoint shares (request ids, bodies that are not JSON, unknown paths)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from overfill.serving.types import ServiceError
from overfill.status import StatusCode
from overfill.v1 import generation_pb2 as pb
from services.router.openai_http import build_openai_app

MODEL = "tiny"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


class ScriptedRouter:
    """What the app calls of GenerationRouter, answering from a script: the pieces `observed_generate` yields, then
    `error` (raised after them, or before any if there are none). Records whether the generator was closed."""

    def __init__(self, pieces=(), error: Exception | None = None, serving: bool = True):
        self.config = SimpleNamespace(server=SimpleNamespace(served_model_name=MODEL, max_context_tokens=256,
                                                               max_chat_messages=1024),
                                      models=SimpleNamespace(full="/models/full"))
        self.model_info = pb.ModelInfoResponse(full_model="/models/full", decoder_parameters=7)
        self.pieces, self.error, self.is_serving = list(pieces), error, serving
        self.requests: list[pb.GenerateRequest] = []
        self.closed = False

    def check_api_key(self, headers) -> None:
        if ("authorization", "Bearer good-key") not in list(headers):
            raise ServiceError(StatusCode.UNAUTHENTICATED, "invalid API key")

    async def observed_generate(self, request: pb.GenerateRequest, caller):
        self.requests.append(request)
        try:
            for piece in self.pieces:
                yield piece
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True

    def status_of(self, error: Exception, request_id: str) -> ServiceError:
        return ServiceError(StatusCode.INTERNAL, f"internal error (request_id {request_id}): {type(error).__name__}")

    async def serving(self):
        return self.is_serving, {"prefill": int(self.is_serving), "decode": 1}


def call(router, method: str, path: str, body: object = None, headers: dict | None = None,
         raw: bytes | None = None) -> tuple[int, dict, bytes]:
    """One request through the app over ASGI: (status, headers, body bytes)."""
    app = build_openai_app(router)
    headers = {"authorization": "Bearer good-key", **(headers or {})}
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    messages = [{"type": "http.request", "body": payload, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def piece(text: str, finish: str = "", completion_tokens: int = 0) -> pb.GenerateResponse:
    response = pb.GenerateResponse(text=text, token_ids=[1], finish_reason=finish, request_id="r")
    if finish:
        response.usage.CopyFrom(pb.Usage(prompt_tokens=3, completion_tokens=completion_tokens))
    return response


def events(body: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in body.decode().split("\n\n") if line]


def test_a_failure_after_the_stream_began_is_an_error_event_and_closes_the_request():
    router = ScriptedRouter([piece("Hel")], ServiceError(StatusCode.UNAVAILABLE, "a replica died (request_id r)"))
    status, headers, body = call(router, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    first, error, done = events(body)
    assert json.loads(first)["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert json.loads(error) == {"error": {"message": "a replica died (request_id r)", "type": "server_error",
                                           "param": None, "code": "unavailable"}}
    assert done == "[DONE]" and router.closed


def test_a_refusal_before_the_first_piece_gets_its_http_status_not_a_stream():
    router = ScriptedRouter([], ServiceError(StatusCode.RESOURCE_EXHAUSTED, "a pool's queue is full"))
    status, headers, body = call(router, "POST", "/v1/chat/completions", {**CHAT, "stream": True},
                                 headers={"x-request-id": "mine-1"})
    assert status == 429 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "resource_exhausted"
    assert "x-request-id" not in headers  # sent by the client: Serve's proxy echoes it, the app must not twice
    assert router.requests[0].request_id == "mine-1" and router.closed


def test_a_whole_reply_and_an_assigned_request_id():
    router = ScriptedRouter([piece("Hel"), piece("lo", "stop", completion_tokens=2)])
    status, headers, body = call(router, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
    reply = json.loads(body)
    assert status == 200 and reply["choices"][0]["text"] == "Hello" and reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert reply["id"] == f"cmpl-{headers['x-request-id']}" == f"cmpl-{router.requests[0].request_id}"


def test_a_bug_in_the_router_is_a_500_naming_the_request():
    status, headers, body = call(ScriptedRouter([], KeyError("boom")), "POST", "/v1/chat/completions", CHAT)
    error = json.loads(body)["error"]
    assert status == 500 and error["code"] == "internal"
    assert error["message"] == f"internal error (request_id {headers['x-request-id']}): KeyError"


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("POST", "/v1/chat/completions", dict(raw=b"{not json"), 400, "not valid JSON"),
    ("POST", "/v1/completions", dict(raw=b'{"model": "tiny", "prompt": "a \\ud800 b"}'), 400, "surrogate"),
    ("POST", "/v1/completions", dict(raw=b"[" * 100_000), 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", dict(body=CHAT, headers={"x-request-id": "has space"}), 400, "x-request-id"),
    ("POST", "/v1/chat/completions", dict(body=CHAT, headers={"authorization": "Bearer nope"}), 401,
     "invalid API key"),
    ("GET", "/v1/chat/completions", {}, 405, "Method Not Allowed"),
    ("POST", "/v1/embeddings", dict(body={}), 404, "Not Found"),
])
def test_every_refusal_is_openai_error_json(method, path, kwargs, status, words):
    got, _, body = call(ScriptedRouter([piece("x", "stop")]), method, path, **kwargs)
    error = json.loads(body)["error"]
    assert got == status and set(error) == {"message", "type", "param", "code"} and words in error["message"]


def test_health_needs_no_key_and_is_503_when_a_pool_is_down():
    status, _, body = call(ScriptedRouter(serving=False), "GET", "/health", headers={"authorization": ""})
    assert status == 503 and json.loads(body)["status"] == "NOT_SERVING"
    status, _, body = call(ScriptedRouter(), "GET", "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["overfill"]["decoder_parameters"] == 7


def post_in_pieces(pieces: list[bytes], headers: dict) -> tuple[int, dict, int]:
    """POST /v1/completions with a body sent as `pieces`: (status, error JSON, pieces the app read)."""
    app = build_openai_app(ScriptedRouter([piece("x", "stop")]))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in {"authorization": "Bearer good-key", **headers}.items()]}
    left, sent = list(pieces), []

    async def receive():
        body = left.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(left)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m for m in sent if m["type"] == "http.response.start")["status"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)["error"], len(pieces) - len(left)


def test_an_oversized_body_is_refused_before_it_is_read_whole():
    from services.router.grpc_handlers import MAX_REQUEST_BYTES

    megabyte = b" " * (1 << 20)
    pieces = [megabyte] * 8  # 8 MiB, past the limit after the fifth piece
    status, error, read = post_in_pieces(pieces, {"content-length": str(8 << 20)})
    assert (status, read) == (400, 0) and f"{8 << 20} bytes, more than the {MAX_REQUEST_BYTES}" in error["message"]
    status, error, read = post_in_pieces(pieces, {})  # chunked: no length declared
    assert status == 400 and read == 5 and f"more than the {MAX_REQUEST_BYTES} bytes" in error["message"]

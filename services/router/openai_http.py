"""The OpenAI-compatible HTTP API, served by the router replica on Ray Serve's HTTP proxy (`server.http_port`).

    POST /v1/chat/completions, POST /v1/completions   (stream: server-sent events, else one JSON reply)
    GET  /v1/models, /v1/models/{id}                  (the served model; `overfill` holds GetModelInfo's fields)
    GET  /health                                      (200 SERVING / 503 NOT_SERVING; no API key, for probes)

Each endpoint only unpacks, calls and packs: the body becomes the gRPC API's GenerateRequest
(overfill/serving/openai_schema.py) and runs through `GenerationRouter.observed_generate`, the path a gRPC Generate
takes (validation, tokenization, prefill, decode, stop strings, migration, metrics). Failures are that path's
ServiceErrors, answered by `openai_error` (overfill/serving/openai_errors.py). A client that disconnects cancels the
request: Ray Serve cancels the replica's handler, which cancels the decode stream and releases the KV, as for a
cancelled gRPC call.

Request ids: the `x-request-id` request header, which Ray Serve's HTTP proxy sets when the client did not (a uuid)
and echoes on the response; it is the request id of the logs, the `id` of the reply (`chatcmpl-<id>`) and the one
an error names. Run without the proxy (in-process tests), the app assigns one and sets the header itself.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overfill.serving.openai_errors import FieldError, invalid_field, openai_error
from overfill.serving.openai_schema import (ChatCompletionRequest, CompletionRequest, ModelCard, ModelList,
                                            ReplyBuilder, parse_request)
from overfill.serving.types import ServiceError
from overfill.serving.validation import REQUEST_ID
from overfill.status import StatusCode
from services.metrics import served_model_name
from services.router.grpc_handlers import MAX_REQUEST_BYTES

if TYPE_CHECKING:
    from services.router.server import GenerationRouter

REQUEST_ID_HEADER = "x-request-id"


def build_openai_app(router: GenerationRouter) -> Starlette:
    """The ASGI app of one router replica: its endpoints call into `router`."""
    api = OpenAIEndpoints(router)
    routes = [
        Route("/v1/chat/completions", api.endpoint(api.chat_completions), methods=["POST"]),
        Route("/v1/completions", api.endpoint(api.completions), methods=["POST"]),
        Route("/v1/models", api.endpoint(api.models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.endpoint(api.model), methods=["GET"]),
        Route("/health", api.endpoint(api.health, needs_key=False), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found_or_not_allowed})


async def not_found_or_not_allowed(request: Request, error: HTTPException) -> Response:
    """Starlette's own 404 (no such path) and 405 (wrong method), in OpenAI's error shape."""
    code = StatusCode.NOT_FOUND if error.status_code == 404 else StatusCode.INVALID_ARGUMENT
    _, body = openai_error(ServiceError(code, f"{request.method} {request.url.path}: {error.detail}"))
    return JSONResponse(body, status_code=error.status_code)


class OpenAIEndpoints:
    def __init__(self, router: GenerationRouter):
        self.router = router
        config = router.config
        self.model_name = served_model_name(config)
        self.model_card = ModelCard(
            id=self.model_name, created=int(time.time()), max_model_len=config.server.max_context_tokens,
            overfill=message_as_json(router.model_info))

    def endpoint(self, handler: Callable[[Request, str], Awaitable[Response]],
                 needs_key: bool = True) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind the checks every endpoint shares: its request id, the API key, and every failure
        answered in OpenAI's error shape with the request id in the `x-request-id` header."""
        async def run(request: Request) -> Response:
            sent_id = request.headers.get(REQUEST_ID_HEADER)
            request_id = sent_id or uuid.uuid4().hex
            try:
                if not REQUEST_ID.fullmatch(request_id):
                    request_id = uuid.uuid4().hex
                    raise FieldError(StatusCode.INVALID_ARGUMENT, "the x-request-id header must be 1-128 "
                                                                  "characters of letters, digits and . _ : -", None)
                if needs_key:  # who the caller is (its key's digest), for the per-key limit of generation
                    request.state.caller = self.router.check_api_key(request.headers.items())
                response = await handler(request, request_id)
            except ServiceError as e:
                response = error_response(e)
            except Exception as e:  # noqa: BLE001  a bug: INTERNAL naming the request, never a bare 500
                response = error_response(self.router.status_of(e, request_id))
            if sent_id is None:  # behind Serve's proxy there is always one, and the proxy echoes it
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        return run

    # ---- endpoints: unpack -> call -> pack ----------------------------------------------------------------------

    async def chat_completions(self, request: Request, request_id: str) -> Response:
        return await self._generate(request, request_id, ChatCompletionRequest, "chat")

    async def completions(self, request: Request, request_id: str) -> Response:
        return await self._generate(request, request_id, CompletionRequest, "completion")

    async def models(self, request: Request, request_id: str) -> Response:
        return JSONResponse(ModelList(data=[self.model_card]).model_dump())

    async def model(self, request: Request, request_id: str) -> Response:
        if request.path_params["model_id"] != self.model_name:
            raise FieldError(StatusCode.NOT_FOUND, f"the model {request.path_params['model_id'][:64]!r} does not "
                                                   f"exist: this service serves {self.model_name!r}", "model",
                             "model_not_found")
        return JSONResponse(self.model_card.model_dump())

    async def health(self, request: Request, request_id: str) -> Response:
        serving, replicas = await self.router.serving()
        return JSONResponse({"status": "SERVING" if serving else "NOT_SERVING", "replicas": replicas},
                            status_code=200 if serving else 503)

    # ---- generation ---------------------------------------------------------------------------------------------

    async def _generate(self, request: Request, request_id: str, schema: type, kind: str) -> Response:
        # 1) The body as the gRPC API's GenerateRequest (HTTP-only checks here; the rest in validate_request).
        body = parse_request(schema, await read_json(request), self.model_name,
                             self.router.config.server.max_chat_messages)
        generate_request = body.to_generate_request(request_id)
        builder = ReplyBuilder(kind, request_id, self.model_name, body.include_usage,
                               logprobs=generate_request.HasField("logprobs"), continuous_usage=body.continuous_usage)
        # 2) The gRPC path. Its first piece comes after validation and prefill, so a refused request gets its HTTP
        #    status before any byte of a stream is sent.
        pieces = self.router.observed_generate(generate_request, request.state.caller)
        try:
            first = await anext(pieces)
        except BaseException:
            await pieces.aclose()
            raise
        # 3) Packed as OpenAI replies.
        if body.stream:
            return StreamingResponse(server_sent_events(first, pieces, builder), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        whole = [first]
        async with aclosing(pieces):
            async for piece in pieces:
                whole.append(piece)
        return JSONResponse(builder.whole(whole).model_dump())


def message_as_json(message) -> dict:
    """A protobuf message as a JSON object, 64-bit integers as numbers (protobuf's JSON mapping makes them strings,
    which JavaScript clients need and Python ones do not)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for field in message.DESCRIPTOR.fields:
        if field.name in data and field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
            data[field.name] = int(data[field.name])
    return data


async def read_json(request: Request) -> object:
    body = await read_bounded_body(request, MAX_REQUEST_BYTES)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser goes
        raise invalid_field(None, f"the request body is not valid JSON: {type(e).__name__} at position "
                                  f"{getattr(e, 'pos', '?')}") from None
    try:  # JSON may escape half a UTF-16 surrogate pair ("\ud800"), which is no text: protobuf refuses it
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise invalid_field(None, "the request body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff): "
                                  "not valid Unicode") from None
    return data


async def read_bounded_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (400 naming the limit) as soon as it is known to pass `max_bytes`: from its Content-Length
    before a byte is read, else while it streams in, so an oversized body is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise invalid_field(None, f"the request body is {int(declared)} bytes, more than the {max_bytes} accepted")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise invalid_field(None, f"the request body is more than the {max_bytes} bytes accepted")
    return bytes(body)


def error_response(error: ServiceError) -> JSONResponse:
    status, body = openai_error(error)
    return JSONResponse(body, status_code=status)


async def server_sent_events(first, pieces: AsyncIterator, builder: ReplyBuilder) -> AsyncIterator[str]:
    """`data: {chunk}` events, then `data: [DONE]`. A failure after the stream began (the status line is sent)
    arrives as one `data: {"error": ...}` event, which the OpenAI SDKs raise as an APIError. `pieces` is closed
    however this ends (a disconnect cancels it mid-await), so its `finally` frees the request's decode slot and lease
    at once, not whenever the generator is collected."""
    async with aclosing(pieces):
        piece = first
        try:
            while piece is not None:
                for chunk in builder.chunks(piece):
                    yield f"data: {builder.chunk_json(chunk)}\n\n"
                piece = await anext(pieces, None)
        except ServiceError as e:
            yield f"data: {json.dumps(openai_error(e)[1])}\n\n"
    yield "data: [DONE]\n\n"


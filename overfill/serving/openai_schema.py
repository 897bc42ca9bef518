"""The OpenAI-compatible HTTP API's bodies (pydantic models of our own: Ray Serve LLM's need vLLM), and their
mapping onto the gRPC API's `GenerateRequest`, so an HTTP request then takes exactly the gRPC request's path.

This module only translates. Ranges the gRPC API already checks (temperature, top_p, max_tokens against the
limit, stop strings, chat roles, the context) are left to `validate_request`, so both APIs refuse the same values
with the same messages. What is checked here is what only the HTTP API has: JSON types, the model name, and the
OpenAI fields the service does not implement, each refused with a 400 naming the field (`param`) rather than
ignored: `n` > 1, `logprobs`/`top_logprobs` (the decode pool does not return log-probabilities yet), `echo`,
`suffix`, `best_of` > 1, non-zero penalties, token-id prompts, several prompts, and any field OpenAI's API does not
define (`tools`, ...).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from overfill.engine.sampling_params import MAX_SEED
from overfill.serving.openai_errors import FieldError, invalid_field
from overfill.serving.validation import MAX_CHAT_MESSAGES
from overfill.status import StatusCode
from overfill.v1 import generation_pb2 as pb

ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
MAX_UINT32 = (1 << 32) - 1  # the gRPC fields' range: larger values are refused here, naming the field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted and unused, as OpenAI does for user and system messages

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class _GenerationRequest(_Strict):
    """Fields both endpoints share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, ge=-1, le=MAX_UINT32)  # vLLM's convention: -1 (like 0) is no cut
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None  # accepted: callers send it for abuse tracking; this service keeps no per-user state
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def _check_common(self) -> None:
        if self.n != 1:
            raise invalid_field("n", f"n must be 1 (one choice per request), got {self.n}")
        if self.stream_options is not None and not self.stream:
            raise invalid_field("stream_options", "stream_options is only allowed when stream is true")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise invalid_field(name, f"{name} is not supported (only 0)")

    def _sampling(self, request: pb.GenerateRequest, max_tokens: int | None, request_id: str) -> pb.GenerateRequest:
        request.max_tokens = max_tokens or 0  # 0: the service's default
        request.request_id = request_id
        if self.temperature is not None:
            request.temperature = self.temperature
        if self.top_p is not None:
            request.top_p = self.top_p
        if self.top_k is not None and self.top_k > 0:
            request.top_k = self.top_k
        if self.seed is not None:
            request.seed = self.seed
        request.stop.extend([self.stop] if isinstance(self.stop, str) else self.stop or [])
        return request

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    # OpenAI's current name for max_tokens; it wins when both are given.
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _bounded(cls, messages: object, info: ValidationInfo) -> object:
        """Refuse a chat of more than server.max_chat_messages messages before pydantic builds one object per
        message: an 8 MiB body holds some 280k empty ones, which took seconds to parse only to be refused after."""
        limit = (info.context or {}).get("max_chat_messages", MAX_CHAT_MESSAGES)
        if isinstance(messages, list) and len(messages) > limit:
            raise PydanticCustomError("too_long", "{num} messages, more than the {limit} accepted "
                                                  "(server.max_chat_messages)", {"num": len(messages), "limit": limit})
        return messages

    def to_generate_request(self, request_id: str) -> pb.GenerateRequest:
        self._check_common()
        if self.logprobs or self.top_logprobs is not None:
            raise invalid_field("logprobs" if self.logprobs else "top_logprobs",
                                "logprobs and top_logprobs are not supported yet: the service does not return "
                                "token log-probabilities")
        chat = pb.ChatMessages(messages=[pb.ChatMessage(role=ROLE_ALIASES.get(m.role, m.role), content=m.text())
                                         for m in self.messages])
        return self._sampling(pb.GenerateRequest(chat=chat), self.max_completion_tokens or self.max_tokens,
                              request_id)


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def to_generate_request(self, request_id: str) -> pb.GenerateRequest:
        self._check_common()
        if self.logprobs is not None:
            raise invalid_field("logprobs", "logprobs is not supported yet: the service does not return token "
                                            "log-probabilities")
        for name, unsupported in (("echo", self.echo), ("suffix", self.suffix is not None),
                                  ("best_of", self.best_of not in (None, 1))):
            if unsupported:
                raise invalid_field(name, f"{name} is not supported")
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise invalid_field("prompt", "prompt must be one string (token ids and several prompts per "
                                              "request are not supported)")
            prompt = prompt[0]
        return self._sampling(pb.GenerateRequest(prompt=prompt), self.max_tokens, request_id)


def parse_request(model: type[_GenerationRequest], body: object, served_model: str,
                  max_chat_messages: int = MAX_CHAT_MESSAGES) -> _GenerationRequest:
    """A decoded JSON body as `model`, or a FieldError naming the first field at fault (400), or the model
    (404 model_not_found). A chat of more than `max_chat_messages` messages is refused before its messages are
    parsed."""
    if not isinstance(body, dict):
        raise invalid_field(None, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        request = model.model_validate(body, context={"max_chat_messages": max_chat_messages})
    except ValidationError as e:
        raise _field_error(e) from None
    if request.model != served_model:
        raise FieldError(StatusCode.NOT_FOUND, f"the model {request.model[:64]!r} does not exist: this service "
                                               f"serves {served_model!r}", "model", "model_not_found")
    return request


def _field_error(error: ValidationError) -> FieldError:
    """The first of pydantic's complaints as one message naming the field (`messages.0.role` -> messages[0].role).
    The value sent is never quoted: it may be the prompt."""
    first = error.errors(include_url=False, include_input=False)[0]
    param = ""
    for part in first["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part not in ("str", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]", "TextPart"):
            param += f".{part}" if param else str(part)
    if first["type"] == "extra_forbidden":
        return invalid_field(param, f"{param} is not a supported field")
    if first["type"] == "missing":
        return invalid_field(param, f"{param} is required")
    return invalid_field(param, f"{param}: {first['msg']}")


# ---- responses ------------------------------------------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: pb.Usage) -> Usage:
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   total_tokens=usage.prompt_tokens + usage.completion_tokens)


class _Reply(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=lambda role: role is None)  # the first chunk's only
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(_Reply):
    """Both the whole completion and each streamed piece (OpenAI uses one object type for both)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of GET /v1/models. `overfill` is the gRPC API's GetModelInfo: the decoder and the sizes."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "overfill"
    max_model_len: int
    overfill: dict


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- from the gRPC API's responses ----------------------------------------------------------------------------------

class ReplyBuilder:
    """Turns the router's GenerateResponses for one request into OpenAI replies: one whole reply, or stream chunks
    (the first chunk of a chat names the assistant role; the one with finish_reason ends the choice; with
    `include_usage`, a last chunk without choices carries the usage, and every other chunk has usage null)."""

    def __init__(self, kind: Literal["chat", "completion"], request_id: str, model: str, include_usage: bool = False):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"
        self.created = int(time.time())
        self.role_sent = False

    def whole(self, text: str, last: pb.GenerateResponse) -> ChatCompletion | Completion:
        usage = Usage.of(last.usage)
        if self.kind == "chat":
            return ChatCompletion(id=self.id, created=self.created, model=self.model, usage=usage, choices=[
                ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason)])
        return Completion(id=self.id, created=self.created, model=self.model, usage=usage, choices=[
            CompletionChoice(text=text, finish_reason=last.finish_reason)])

    def chunks(self, piece: pb.GenerateResponse) -> list[BaseModel]:
        """The chunks one GenerateResponse becomes (none for an empty middle piece: a character not yet complete)."""
        finish = piece.finish_reason or None
        if not piece.text and finish is None and (self.role_sent or self.kind != "chat"):
            return []
        chunks: list[BaseModel] = []
        if self.kind == "chat":
            delta = ChatDelta(content=piece.text)
            if not self.role_sent:
                delta.role, self.role_sent = "assistant", True
            chunks.append(ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                              choices=[ChatChunkChoice(delta=delta, finish_reason=finish)]))
        else:
            chunks.append(Completion(id=self.id, created=self.created, model=self.model,
                                     choices=[CompletionChoice(text=piece.text, finish_reason=finish)]))
        if finish is not None and self.include_usage:
            kind = ChatCompletionChunk if self.kind == "chat" else Completion
            chunks.append(kind(id=self.id, created=self.created, model=self.model, choices=[],
                               usage=Usage.of(piece.usage)))
        return chunks

    def chunk_json(self, chunk: BaseModel) -> str:
        """A chunk as JSON: `usage` appears (as null before the last chunk) only when include_usage asked for it."""
        return chunk.model_dump_json(exclude=None if self.include_usage else {"usage"})

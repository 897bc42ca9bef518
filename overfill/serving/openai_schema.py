"""The OpenAI-compatible HTTP API's bodies (pydantic models of our own: Ray Serve LLM's need vLLM), and their
mapping onto the gRPC API's `GenerateRequest`, so an HTTP request then takes exactly the gRPC request's path.

This module only translates. Ranges the gRPC API already checks (temperature, top_p, max_tokens against the
limit, stop strings, chat roles, the context) are left to `validate_request`, so both APIs refuse the same values
with the same messages. What is checked here is what only the HTTP API has: JSON types, the model name, and the
OpenAI fields the service does not implement, each refused with a 400 naming the field (`param`) rather than
ignored: `n` > 1, `echo`, `suffix`, `best_of` > 1, non-zero penalties, several prompts, and any field neither
OpenAI's API nor vLLM's extensions of it (`top_k`, `stop_token_ids`, `ignore_eos`) define (`tools`, ...).

Log-probabilities come back in OpenAI's two shapes: chat's `logprobs.content` (token, logprob, bytes, top_logprobs)
and completions' `logprobs` (tokens, token_logprobs, top_logprobs, text_offset).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from overfill.engine.sampling_params import MAX_LOGPROBS, MAX_SEED
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
    continuous_usage_stats: bool = False  # vLLM's (guidellm sends it): every chunk carries the usage so far


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
    stop_token_ids: list[int] | None = None  # vLLM's: token ids that end generation as EOS does
    ignore_eos: bool = False                 # vLLM's: generate past EOS

    @field_validator("stop_token_ids")
    @classmethod
    def _token_ids_in_range(cls, ids: list[int] | None) -> list[int] | None:
        if ids is not None and not all(0 <= i <= MAX_UINT32 for i in ids):
            raise PydanticCustomError("token_id", "token ids must be integers >= 0")
        return ids

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
        request.stop_token_ids.extend(self.stop_token_ids or [])
        request.ignore_eos = self.ignore_eos
        return request

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    # OpenAI's current name for max_tokens; it wins when both are given.
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

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
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid_field("top_logprobs", "top_logprobs needs logprobs set to true")
        chat = pb.ChatMessages(messages=[pb.ChatMessage(role=ROLE_ALIASES.get(m.role, m.role), content=m.text())
                                         for m in self.messages])
        request = self._sampling(pb.GenerateRequest(chat=chat), self.max_completion_tokens or self.max_tokens,
                                 request_id)
        if self.logprobs:
            request.logprobs = self.top_logprobs or 0
        return request


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # OpenAI allows 5, vLLM 20
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def to_generate_request(self, request_id: str) -> pb.GenerateRequest:
        self._check_common()
        for name, unsupported in (("echo", self.echo), ("suffix", self.suffix is not None),
                                  ("best_of", self.best_of not in (None, 1))):
            if unsupported:
                raise invalid_field(name, f"{name} is not supported")
        request = self._sampling(self._input(), self.max_tokens, request_id)
        if self.logprobs is not None:
            request.logprobs = self.logprobs
        return request

    def _input(self) -> pb.GenerateRequest:
        """One prompt: a string, or token ids (alone, or as the only entry of a list)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise invalid_field("prompt", f"prompt holds {len(prompt)} prompts: one per request is supported")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return pb.GenerateRequest(prompt=prompt)
        if not all(0 <= token_id <= MAX_UINT32 for token_id in prompt):
            raise invalid_field("prompt", "prompt token ids must be integers >= 0")
        return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt))


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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's text as UTF-8


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]

    @classmethod
    def of(cls, logprobs: Sequence[pb.TokenLogprob]) -> ChatLogprobs:
        return cls(content=[ChatTokenLogprob(token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
                                             top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob,
                                                                      bytes=list(t.token.encode()))
                                                           for t in e.top_logprobs])
                            for e in logprobs])


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]  # where each token's text starts in the choice's text

    @classmethod
    def of(cls, logprobs: Sequence[pb.TokenLogprob], text_start: int = 0) -> CompletionLogprobs:
        """`text_start`: characters of the choice's text before these tokens (earlier stream chunks)."""
        offsets = list(itertools.accumulate((len(e.token) for e in logprobs), initial=text_start))[:-1]
        return cls(tokens=[e.token for e in logprobs], token_logprobs=[e.logprob for e in logprobs],
                   top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in logprobs], text_offset=offsets)


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


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
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


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
    `include_usage`, a last chunk without choices carries the usage, and every other chunk has usage null; with
    `continuous_usage`, every chunk carries the usage so far, as vLLM's continuous_usage_stats does)."""

    def __init__(self, kind: Literal["chat", "completion"], request_id: str, model: str, include_usage: bool = False,
                 logprobs: bool = False, continuous_usage: bool = False):
        self.kind, self.model, self.include_usage, self.logprobs = kind, model, include_usage, logprobs
        self.continuous_usage = continuous_usage
        self.prompt_tokens = self.completion_tokens = 0  # so far (the first piece names the prompt's)
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"
        self.created = int(time.time())
        self.role_sent = False
        self.text_sent = 0  # characters of token text streamed so far (completions' text_offset)

    def whole(self, pieces: Sequence[pb.GenerateResponse]) -> ChatCompletion | Completion:
        """The reply to a request not streamed, from all its pieces (the last one ends it)."""
        text, last = "".join(piece.text for piece in pieces), pieces[-1]
        logprobs = [entry for piece in pieces for entry in piece.logprobs]
        usage = Usage.of(last.usage)
        if self.kind == "chat":
            return ChatCompletion(id=self.id, created=self.created, model=self.model, usage=usage, choices=[
                ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason,
                           logprobs=ChatLogprobs.of(logprobs) if self.logprobs else None)])
        return Completion(id=self.id, created=self.created, model=self.model, usage=usage, choices=[
            CompletionChoice(text=text, finish_reason=last.finish_reason,
                             logprobs=CompletionLogprobs.of(logprobs) if self.logprobs else None)])

    def chunks(self, piece: pb.GenerateResponse) -> list[BaseModel]:
        """The chunks one GenerateResponse becomes (none for an empty middle piece, a character not yet complete,
        unless it carries log-probabilities)."""
        finish = piece.finish_reason or None
        self.prompt_tokens = self.prompt_tokens or piece.usage.prompt_tokens
        self.completion_tokens += len(piece.token_ids)
        if not piece.text and finish is None and not piece.logprobs and (self.role_sent or self.kind != "chat"):
            return []
        chunks: list[BaseModel] = []
        if self.kind == "chat":
            delta = ChatDelta(content=piece.text)
            if not self.role_sent:
                delta.role, self.role_sent = "assistant", True
            logprobs = ChatLogprobs.of(piece.logprobs) if self.logprobs else None
            chunks.append(ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[
                ChatChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)]))
        else:
            logprobs = CompletionLogprobs.of(piece.logprobs, self.text_sent) if self.logprobs else None
            self.text_sent += sum(len(entry.token) for entry in piece.logprobs)
            chunks.append(Completion(id=self.id, created=self.created, model=self.model, choices=[
                CompletionChoice(text=piece.text, finish_reason=finish, logprobs=logprobs)]))
        if self.continuous_usage:
            chunks[0].usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                                    total_tokens=self.prompt_tokens + self.completion_tokens)
        if finish is not None and self.include_usage:
            kind = ChatCompletionChunk if self.kind == "chat" else Completion
            chunks.append(kind(id=self.id, created=self.created, model=self.model, choices=[],
                               usage=Usage.of(piece.usage)))
        return chunks

    def chunk_json(self, chunk: BaseModel) -> str:
        """A chunk as JSON: `usage` appears (as null where a chunk has none) only when include_usage or
        continuous_usage asked for it."""
        return chunk.model_dump_json(exclude=None if self.include_usage or self.continuous_usage else {"usage"})

"""Checking a public GenerateRequest and turning it into token ids and sampling parameters (the router's first job).

Every refusal is a ServiceError whose message names the field: INVALID_ARGUMENT for a bad value,
RESOURCE_EXHAUSTED when the prompt plus max_tokens does not fit the context.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass

from overfill.engine.sampling import SamplingParams
from overfill.engine.sampling_params import MAX_LOGPROBS
from overfill.prompts import has_chat_template, render_chat
from overfill.request_parsing import UnparsableRequest
from overfill.serving.config import MAX_PROMPT_CHARS
from overfill.serving.types import ContextLengthExceeded, ServiceError
from overfill.status import StatusCode

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 256
MAX_STOP_TOKEN_IDS = 32
MAX_TEMPERATURE = 10.0
MAX_CHAT_MESSAGES = 1024       # server.max_chat_messages by default
ROLES = ("system", "user", "assistant")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


CHARS_PER_TOKEN_SLACK = 4  # a normalizer may compose characters (NFC: e + U+0301 -> U+00E9) before tokens are cut


@dataclass(frozen=True)
class Limits:
    max_context_tokens: int
    max_tokens_limit: int
    default_max_tokens: int
    max_token_chars: int = 0  # characters of text one token covers at most (max_token_chars()); 0: no pre-check
    max_prompt_chars: int = MAX_PROMPT_CHARS    # a prompt's characters, or a chat's contents' together
    max_chat_messages: int = MAX_CHAT_MESSAGES  # messages in a chat


def max_token_chars(tokenizer) -> int:
    """The most characters of text one token can cover: its longest vocabulary entry, for byte-level BPE without a
    normalizer (Llama 3's and SmolLM2's tokenizers): it spells each byte as one character and a text's character is
    at least one byte, so no token covers more characters of the text than its entry has. Any other tokenizer may
    compose characters first (a normalizer; a slow tokenizer, unseen), so CHARS_PER_TOKEN_SLACK times that. (A
    pre-tokenizer that drops characters, such as BERT's Whitespace, has no such bound; the supported architectures'
    tokenizers have none.)"""
    from tokenizers.pre_tokenizers import ByteLevel

    longest = max(len(token) for token in tokenizer.get_vocab())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.normalizer is None and isinstance(backend.pre_tokenizer, ByteLevel):
        return longest
    return CHARS_PER_TOKEN_SLACK * longest


def _refuse_if_cannot_fit(num_chars: int, field: str, max_tokens: int, limits: Limits) -> None:
    """Refuse at once a text too long for any tokenization of it to fit: the worst texts (CJK, combining marks)
    take a quarter of a second per 165K characters to tokenize, only to be refused afterwards."""
    room = limits.max_context_tokens - max_tokens
    if limits.max_token_chars and num_chars > limits.max_token_chars * room:
        raise ContextLengthExceeded(f"{field} ({num_chars} characters) cannot fit the {room} tokens left by "
                                    f"max_tokens ({max_tokens}) in the context of {limits.max_context_tokens}")


def _tokenize(tokenizer, text: str, field: str, max_tokens: int, limits: Limits, **kwargs) -> list[int]:
    """Token ids of `text`, refusing before tokenizing a text that cannot fit."""
    _refuse_if_cannot_fit(len(text), field, max_tokens, limits)
    return tokenizer(text, **kwargs)["input_ids"]


@dataclass(frozen=True)
class ValidRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    stop: list[str]


ECHO_CHARS = 32  # what a refusal quotes of a client's value at most: an error must not return the client's payload


def _quoted_prefix(value: str) -> str:
    """`value` quoted as a refusal echoes it: whole if short, else its first ECHO_CHARS characters and its length."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def _invalid(message: str) -> ServiceError:
    return ServiceError(StatusCode.INVALID_ARGUMENT, message)


def validate_request(request, tokenizer, limits: Limits) -> ValidRequest:
    """request: an overfill.v1.GenerateRequest, or the UnparsableRequest its bytes became (invalid UTF-8 ...)."""
    if isinstance(request, UnparsableRequest):
        raise _invalid(request.message)
    # 1) Identity.
    request_id = request.request_id or uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(request_id):
        raise _invalid("request_id must be 1-128 characters of letters, digits and . _ : -")

    # 2) Sampling.
    max_tokens = request.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens_limit:
        raise _invalid(f"max_tokens must be in [1, {limits.max_tokens_limit}], got {max_tokens}")
    temperature = request.temperature if request.HasField("temperature") else 0.0
    if not math.isfinite(temperature) or not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise _invalid(f"temperature must be a finite number in [0, {MAX_TEMPERATURE:g}], got {temperature}")
    top_p = request.top_p if request.HasField("top_p") else 1.0
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise _invalid(f"top_p must be in (0, 1], got {top_p}")
    top_k = request.top_k if request.HasField("top_k") else 0  # uint32: never negative; 0 is no cut
    seed = request.seed if request.HasField("seed") else None
    stop = list(request.stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise _invalid(f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    for index, text in enumerate(stop):
        if not 1 <= len(text) <= MAX_STOP_LENGTH:
            raise _invalid(f"stop[{index}] must be 1-{MAX_STOP_LENGTH} characters, got {len(text)}")
    stop_token_ids = tuple(request.stop_token_ids)
    if len(stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise _invalid(f"stop_token_ids may hold at most {MAX_STOP_TOKEN_IDS} ids, got {len(stop_token_ids)}")
    _refuse_unknown_ids(stop_token_ids, "stop_token_ids", tokenizer)
    logprobs = request.logprobs if request.HasField("logprobs") else None
    if logprobs is not None and logprobs > MAX_LOGPROBS:
        raise _invalid(f"logprobs must be in [0, {MAX_LOGPROBS}], got {logprobs}")

    # 3) The prompt, tokenized once.
    which = request.WhichOneof("input")
    if which == "prompt":
        if not request.prompt.strip():
            raise _invalid("prompt is empty")
        if len(request.prompt) > limits.max_prompt_chars:
            raise _invalid(f"prompt has {len(request.prompt)} characters, more than the {limits.max_prompt_chars} "
                           f"accepted")
        prompt_ids = _tokenize(tokenizer, request.prompt, "prompt", max_tokens, limits)
    elif which == "chat":
        # Everything a chat can hold is bounded before the template renders it: rendering costs time in the
        # number of messages and characters, and a chat of 300k empty messages took seconds.
        messages = request.chat.messages
        if not messages:
            raise _invalid("chat.messages is empty")
        if len(messages) > limits.max_chat_messages:
            raise _invalid(f"chat.messages holds {len(messages)} messages, more than the {limits.max_chat_messages} "
                           f"accepted")
        num_chars = 0
        for index, message in enumerate(messages):
            if message.role not in ROLES:
                raise _invalid(f"chat.messages[{index}].role must be one of {', '.join(ROLES)}, got "
                               f"{_quoted_prefix(message.role)}")
            num_chars += len(message.content)
        if num_chars > limits.max_prompt_chars:
            raise _invalid(f"chat.messages[].content has {num_chars} characters in all, more than the "
                           f"{limits.max_prompt_chars} accepted")
        _refuse_if_cannot_fit(num_chars, "chat", max_tokens, limits)  # the template only adds to the contents
        if not has_chat_template(tokenizer):
            raise _invalid("chat is not available: the model has no chat template (send prompt instead)")
        text = render_chat(tokenizer, [{"role": m.role, "content": m.content} for m in messages])
        prompt_ids = _tokenize(tokenizer, text, "chat", max_tokens, limits, add_special_tokens=False)
    elif which == "prompt_token_ids":
        prompt_ids = list(request.prompt_token_ids.ids)
        if not prompt_ids:
            raise _invalid("prompt_token_ids.ids is empty")
        if len(prompt_ids) > limits.max_context_tokens:  # before the vocabulary walk: that costs per id
            raise ContextLengthExceeded(f"prompt_token_ids holds {len(prompt_ids)} tokens, more than the context of "
                                        f"{limits.max_context_tokens} tokens")
        _refuse_unknown_ids(prompt_ids, "prompt_token_ids.ids", tokenizer)
    else:
        raise _invalid("one of prompt, chat or prompt_token_ids must be set")
    if not prompt_ids:
        raise _invalid("prompt encodes to no tokens")
    if len(prompt_ids) + max_tokens > limits.max_context_tokens:
        raise ContextLengthExceeded(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
                                    f"context of {limits.max_context_tokens} tokens")
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                              max_new_tokens=max_tokens, stop_token_ids=stop_token_ids, ignore_eos=request.ignore_eos,
                              logprobs=logprobs)
    return ValidRequest(request_id, prompt_ids, sampling, stop)


def _refuse_unknown_ids(token_ids, field: str, tokenizer) -> None:
    """Token ids a caller sent must be ids of the served model's vocabulary (the embedding would index past it)."""
    if not token_ids:
        return
    vocab_size = len(tokenizer)
    for index, token_id in enumerate(token_ids):
        if token_id >= vocab_size:
            raise _invalid(f"{field}[{index}] = {token_id} is not a token id of the model (its vocabulary has "
                           f"{vocab_size})")


class StopStringMatcher:
    """Streams text while holding back what could be the start of a stop string; reports the first stop found."""

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """New text -> (text safe to emit now, whether a stop string was reached)."""
        self.pending += text
        if not self.stop:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        cut = max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

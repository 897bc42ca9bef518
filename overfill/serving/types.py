"""What travels between the router, the prefill pool and the decode pool (small objects only: never KV bytes)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from overfill.engine.sampling_params import SamplingParams, TokenLogprobs
from overfill.status import FinishReason, StatusCode
from overfill.transport.base import KVTicket


class ServiceError(Exception):
    """An error with the gRPC status the client must see (docs/architecture.md, "Errors"). `code` is a StatusCode
    (a status name given as a string is checked against it here, so a misspelt code fails where it is raised)."""

    def __init__(self, code: StatusCode | str, message: str):
        code = StatusCode(code)
        super().__init__(code, message)  # both in args, so the error survives pickling between processes
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def with_message(self, message: str) -> ServiceError:
        """The same error, its type and whatever a subclass carries included, with another message."""
        error = copy.copy(self)
        error.message, error.args = message, (self.code, message)
        return error


class ContextLengthExceeded(ServiceError):
    """RESOURCE_EXHAUSTED because the prompt plus max_tokens cannot fit the context. Unlike a full queue, the same
    request never succeeds later: the HTTP API answers it 400 (context_length_exceeded), not 429, which clients
    retry."""

    def __init__(self, message: str):
        super().__init__(StatusCode.RESOURCE_EXHAUSTED, message)

    def __reduce__(self):
        return type(self), (self.message,)


class AdmissionRefused(ServiceError):
    """A decode replica refused a request before touching its KV (full, or its model thread held by a step): the
    lease at prefill still holds the KV, so another decode replica may take the same ticket. `replica_id` names the
    replica that refused (its Ray Serve replica id, set by services/decode; "" outside Serve), so the router's next
    call can ask the pool to rank that replica last."""

    def __init__(self, code: StatusCode | str, message: str, replica_id: str = ""):
        super().__init__(code, message)
        self.replica_id = replica_id

    def __reduce__(self):  # the replica id survives pickling between processes too
        return type(self), (self.code, self.message, self.replica_id)


@dataclass(frozen=True)
class PrefillRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    trace_context: dict[str, str] | None = None  # W3C trace context of the router's prefill span, when traced
    #                                              (overfill/serving/tracing.py): the parent of the batch's span


@dataclass(frozen=True)
class PrefillResult:
    """The prefill ticket: where the KV waits, the first token, and the seed sampling continues with."""

    request_id: str
    ticket: KVTicket | None   # None when the request already finished at its first token (no KV is kept)
    first_token: int
    prompt_tokens: int
    finish_reason: FinishReason | None  # when the first token ended the request
    seed: int                  # the request's sampling seed (its own, or drawn at prefill): decode's token i draws
    #                            with (seed, i), see engine/sampling_params.py
    prefill_s: float           # time spent queued + prefilling in the prefill replica
    first_logprobs: TokenLogprobs | None = None  # the first token's, under the full model (when the request asks)
    trace_context: dict[str, str] | None = None  # W3C trace context of the request's trace, set by the router for
    #                                              decode when traced: the parent of the KV pull's span


@dataclass(frozen=True)
class TokenChunk:
    """Tokens decoded since the previous chunk; the last chunk of a request has `finish_reason`."""

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    kv_transfer_s: float | None = None  # on the first chunk: how long the KV pull took
    logprobs: list[TokenLogprobs] | None = None  # one per token id, under the decoder, when the request asks

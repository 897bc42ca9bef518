"""The spans of one request in the router (overfill/serving/tracing.py), one trace per request:

    overfill.request            the call, from its arrival to its last message (request id, tokens, finish reason,
    |                           status code on failure; never the prompt or the output)
    +- tokenize                 validation and tokenization
    +- prefill                  the wait for the ticket, once per attempt
    |  +- prefill.batch         (the prefill replica) the batch the request ran in: forward and KV lease
    +- kv_pull                  (the decode replica) the KV pulled into its slot, once per attempt
    +- decode                   first decoded token to the last, with their count, once per attempt

A request whose decode replica died is migrated (server.py, `_generate`): its second attempt adds a prefill, a
kv_pull and a decode to the same trace, and its first decode span ends UNAVAILABLE. Spans reach the other replicas'
spans through carriers: the prefill span's on the PrefillRequest, the root's on the PrefillResult sent to decode.

Without tracing every method returns at once: no span, no carrier, nothing per token."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry.trace import Span, SpanKind

from overfill.serving.tracing import Carrier, Tracing, carrier_of
from overfill.serving.types import PrefillResult, ServiceError
from overfill.serving.validation import REQUEST_ID
from overfill.status import StatusCode


class RequestTracer:
    """Starts a RequestTrace per request. `service_error_of`: the router's reading of an error from another replica
    (services/router/server.py), so that a span's status code is the one the client gets."""

    def __init__(self, tracing: Tracing | None, service_error_of: Callable[[BaseException], ServiceError | None]):
        self.tracing = tracing
        self._service_error_of = service_error_of

    def start(self, request_id: str) -> RequestTrace:
        """The root span of a request that has just arrived; `request_id` as sent (named only if it is valid)."""
        return RequestTrace(self.tracing, self.status_code_of, request_id)

    def status_code_of(self, error: BaseException) -> StatusCode:
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            return StatusCode.CANCELLED
        service_error = self._service_error_of(error)
        return StatusCode.INTERNAL if service_error is None else service_error.code

    def flush(self) -> None:
        if self.tracing is not None:
            self.tracing.flush()


class RequestTrace:
    """One request's spans in the router: `observed_generate` holds the root, `_generate` opens the children."""

    def __init__(self, tracing: Tracing | None, status_code_of: Callable[[BaseException], StatusCode],
                 request_id: str):
        self.tracing = tracing
        self._status_code_of = status_code_of
        self.root: Span | None = None
        self._decode: Span | None = None
        self._decode_tokens_before = 0
        self._finished = False  # the last message is out
        self._failure: StatusCode | None = None
        if tracing is not None:
            attributes = {"overfill.request_id": request_id} if REQUEST_ID.fullmatch(request_id or "") else {}
            self.root = tracing.start("overfill.request", None, attributes, kind=SpanKind.SERVER)

    # ---- the root ------------------------------------------------------------------------------------------------

    def tokenized(self, request_id: str, prompt_tokens: int) -> None:
        if self.root is not None:
            self.root.set_attributes({"overfill.request_id": request_id, "overfill.prompt_tokens": prompt_tokens})

    def finished(self, completion_tokens: int, finish_reason: str) -> None:
        """The request's last message is out."""
        if self.root is not None:
            self.root.set_attributes({"overfill.completion_tokens": completion_tokens,
                                      "overfill.finish_reason": finish_reason})
            self._finished = True

    def failed(self, code: StatusCode) -> None:
        self._failure = code

    def end(self) -> None:
        """End the root: finished, failed with its code, or CANCELLED: the caller left before its last message."""
        if self.root is not None:
            self.tracing.end(self.root, None if self._finished else self._failure or StatusCode.CANCELLED)

    # ---- children ------------------------------------------------------------------------------------------------

    def tokenize(self) -> AbstractContextManager:
        if self.root is None:
            return nullcontext()
        return self.tracing.span("tokenize", self.root, code_of=self._status_code_of)

    @contextmanager
    def prefill(self, attempt: int, prompt_tokens: int) -> Iterator[Carrier | None]:
        """Around the wait for a ticket; yields the carrier the PrefillRequest takes to the prefill replica."""
        if self.root is None:
            yield None
            return
        if attempt:
            self.root.set_attribute("overfill.migrations", attempt)
        attributes = {"overfill.attempt": attempt, "overfill.prompt_tokens": prompt_tokens}
        with self.tracing.span("prefill", self.root, attributes, code_of=self._status_code_of) as span:
            yield carrier_of(span)

    def for_decode(self, result: PrefillResult) -> PrefillResult:
        """The ticket as decode gets it: with the root's carrier, the parent of the decode replica's kv_pull."""
        if self.root is None:
            return result
        return dataclasses.replace(result, trace_context=carrier_of(self.root))

    def decode_started(self, attempt: int, tokens_sent: int) -> None:
        """The first decoded token is here; `tokens_sent`: the request's tokens before it."""
        if self.root is not None:
            self._decode = self.tracing.start("decode", self.root, {"overfill.attempt": attempt})
            self._decode_tokens_before = tokens_sent

    def decode_failed(self, error: BaseException, tokens_sent: int) -> None:
        self._end_decode(tokens_sent, self._status_code_of(error))

    def decode_ended(self, tokens_sent: int) -> None:
        """The decode stream is over; a decode span still open ends OK if the request finished, else CANCELLED."""
        self._end_decode(tokens_sent, None if self._finished else StatusCode.CANCELLED)

    def _end_decode(self, tokens_sent: int, code: StatusCode | None) -> None:
        if self._decode is not None:
            self._decode.set_attribute("overfill.decode.tokens", tokens_sent - self._decode_tokens_before)
            self.tracing.end(self._decode, code)
            self._decode = None

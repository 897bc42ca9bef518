"""Handing a prefilled request to the decode pool, and asking again when a replica refuses it at admission.

A decode replica that is full, or whose model thread is stuck in a step, refuses before touching the KV
(`AdmissionRefused`): the lease at prefill still holds it, so another replica can take the same ticket. Ray polls
each replica's routing stats every 0.5 s; until then the decode request router may still pick the refusing replica.
With more than one decode replica the router therefore pauses a little longer than that and asks the pool again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from overfill.serving.types import AdmissionRefused, TokenChunk
from services.router.error_chain import error_chain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionRetry:
    tries: int = 3           # decode replicas asked in turn, when the pool has more than one
    pause_s: float = 0.6     # before asking again: longer than Ray's 0.5 s routing-stats poll


def admission_refusal_of(error: BaseException) -> AdmissionRefused | None:
    """The AdmissionRefused behind an error from the decode pool (Ray wraps a replica's exception as `.cause`)."""
    return next((e for e in error_chain(error) if isinstance(e, AdmissionRefused)), None)


async def admitted_decode_stream(start_stream: Callable[[], object], decode_replicas: Callable[[], Awaitable[int]],
                                 request_id: str, retry: AdmissionRetry = AdmissionRetry(),
                                 on_retry: Callable[[], None] = lambda: None) -> tuple[object, TokenChunk | None]:
    """(the decode stream, its first chunk; None if it ended without one). `start_stream()` calls the decode pool
    once (a Ray Serve streaming call). A refusal at admission is tried again, up to `retry.tries` calls in all,
    when `decode_replicas()` says the pool has more than one; the last refusal is raised. Cancelled while waiting,
    the stream it started is cancelled too (that frees a decode slot the request may already hold)."""
    tries, attempt = 1, 1
    while True:
        stream = start_stream()
        try:
            return stream, await anext(stream, None)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as error:
            refusal = admission_refusal_of(error)
            if refusal is None:
                raise
            if attempt == 1 and await decode_replicas() > 1:
                tries = retry.tries
            if attempt >= tries:
                raise
            log.info("request %s: refused by a decode replica at admission (%s); asking the pool again (%d/%d)",
                     request_id, refusal.code, attempt + 1, tries)
            on_retry()
        attempt += 1
        await asyncio.sleep(retry.pause_s)

"""Handing a prefilled request to the decode pool, and asking again when a replica refuses it at admission.

A decode replica that is full, or whose model thread is held by a step, refuses before touching the KV
(`AdmissionRefused`, naming the replica): the lease at prefill still holds it, so another replica can take the same
ticket. Each call carries the ids of the replicas that refused the request so far, and the decode request router
(request_router.py) ranks those last, from the request itself, whatever their routing stats (polled every 0.5 s) say
yet. So a retry never goes back to a replica that refused while another one is left, and a refusal from a replica
that refused already means no other one was left: that refusal is the status. The retries are bounded by time
(`decode.admission_retry_s`), never by the pool size the router last read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from overfill.serving.types import AdmissionRefused, TokenChunk
from services.router.error_chain import error_chain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionRetry:
    timeout_s: float = 10.0  # decode.admission_retry_s: no call starts later than this after the first refusal


def admission_refusal_of(error: BaseException) -> AdmissionRefused | None:
    """The AdmissionRefused behind an error from the decode pool (Ray wraps a replica's exception as `.cause`)."""
    return next((e for e in error_chain(error) if isinstance(e, AdmissionRefused)), None)


async def admitted_decode_stream(start_stream: Callable[[tuple[str, ...]], object], request_id: str,
                                 retry: AdmissionRetry = AdmissionRetry(), on_retry: Callable[[], None] = lambda: None,
                                 clock: Callable[[], float] = time.monotonic) -> tuple[object, TokenChunk | None]:
    """(the decode stream, its first chunk; None if it ended without one). `start_stream(avoid_replicas)` calls the
    decode pool once (a Ray Serve streaming call) with the ids of the replicas that refused this request so far.
    A refusal at admission is asked of the pool again while it comes from a replica that had not refused yet and
    `retry.timeout_s` has not passed since the first refusal; otherwise that refusal is raised. Cancelled while
    waiting, the stream it started is cancelled too (that frees a decode slot the request may already hold)."""
    refused_by: list[str] = []
    first_refusal_at = None
    while True:
        stream = start_stream(tuple(refused_by))
        try:
            return stream, await anext(stream, None)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as error:
            refusal = admission_refusal_of(error)
            if refusal is None:
                raise
            first_refusal_at = clock() if first_refusal_at is None else first_refusal_at
            # No id: nothing to rank last, a retry could land on it again. Refused again: no other replica was left.
            if not refusal.replica_id or refusal.replica_id in refused_by:
                raise
            if clock() - first_refusal_at >= retry.timeout_s:
                raise
            refused_by.append(refusal.replica_id)
            log.info("request %s: refused by decode replica %s at admission (%s); asking the pool again, %d "
                     "replica(s) ranked last", request_id, refusal.replica_id, refusal.code, len(refused_by))
            on_retry()

"""Timing one streamed Generate call from a blocking (sync) client: TTFT and E2E, as Locust users record them.

Kept free of Locust so it is tested without it; `loadtest/locustfile.py` is a thin wrapper that turns a
`StreamTiming` into two Locust request events ("Generate TTFT" and "Generate E2E").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

TTFT_NAME = "Generate TTFT"
E2E_NAME = "Generate E2E"


@dataclass(frozen=True)
class StreamTiming:
    ttft_ms: float | None        # send -> first message with tokens; None if none came
    e2e_ms: float                # send -> last message with tokens, or -> the failure
    output_tokens: int
    error: Exception | None      # the grpc.RpcError (or an empty stream) of a failed call

    def events(self) -> list[dict]:
        """The keyword arguments of Locust's `events.request.fire`, one dict per entry (TTFT first, then E2E).
        A failure reports its exception on both; a call with no token has no TTFT, so it reports the failure time."""
        ttft = self.ttft_ms if self.ttft_ms is not None else self.e2e_ms
        base = {"request_type": "grpc", "exception": self.error, "context": {}}
        return [{**base, "name": TTFT_NAME, "response_time": ttft,
                 "response_length": 1 if self.ttft_ms is not None else 0},
                {**base, "name": E2E_NAME, "response_time": self.e2e_ms, "response_length": self.output_tokens}]


class EmptyStream(RuntimeError):
    pass


def time_stream(start_call: Callable[[], Iterable], clock: Callable[[], float] = time.perf_counter) -> StreamTiming:
    """Call `start_call()` (e.g. `lambda: stub.Generate(request, metadata=..., timeout=...)`), read the stream to
    its end, and time it. Messages with no token_ids do not count as tokens arriving."""
    start = clock()
    first = last = None
    tokens = 0
    try:
        for response in start_call():
            if response.token_ids:
                last = clock()
                first = last if first is None else first
                tokens += len(response.token_ids)
        error = None if first is not None else EmptyStream("the stream ended without any token")
    except grpc.RpcError as e:
        error = e
    end = last if error is None else clock()
    return StreamTiming(None if first is None else (first - start) * 1000.0, (end - start) * 1000.0, tokens, error)

"""What the client saw of one request: the raw timings every metric is computed from (no model, no gRPC here)."""

from __future__ import annotations

from dataclasses import dataclass, field

OK = "OK"


@dataclass
class RequestRecord:
    """One request's trace. Times are seconds since the benchmark started (one monotonic clock).

    A *chunk* is one streamed message that carries tokens; the service may pack several tokens into one message,
    which is why ITL (gaps between chunks) and TPOT (time per token) can differ.
    """
    index: int                      # position in the benchmark's request list
    request_id: str
    prompt_len: int                 # the dataset's estimate until the service reports its own count
    max_tokens: int
    scheduled_s: float = 0.0        # when the arrival process released the request
    send_s: float = 0.0             # when its RPC started (after the --max-concurrency limit let it through)
    chunk_times_s: list[float] = field(default_factory=list)   # arrival time of each chunk
    chunk_tokens: list[int] = field(default_factory=list)      # tokens in each chunk
    status: str = OK                # gRPC status name; OK only for a stream that ended normally with tokens
    error: str = ""                 # the status details for a failed request

    @property
    def success(self) -> bool:
        return self.status == OK

    @property
    def output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ttft_s(self) -> float:
        """Send -> first chunk."""
        return self.chunk_times_s[0] - self.send_s

    @property
    def e2el_s(self) -> float:
        """Send -> last chunk."""
        return self.chunk_times_s[-1] - self.send_s

    @property
    def itls_s(self) -> list[float]:
        """Gaps between consecutive chunks (one fewer than chunks)."""
        times = self.chunk_times_s
        return [b - a for a, b in zip(times, times[1:])]

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output tokens - 1), defined only with more than one output token (as vLLM)."""
        if self.output_tokens <= 1:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

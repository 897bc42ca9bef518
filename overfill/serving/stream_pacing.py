"""How often a decode replica sends a stream its tokens: a per-replica budget of token messages per second.

Every message a stream gets crosses two Ray hops (decode -> router -> gRPC proxy), and each costs CPU at both ends
whatever it carries: about 2-3 ms per message on the 2-core CPU machine (`overfill bench service`). One message per
token per stream spends that on every token; under load it starves the model step of the cores it needs. A budget of
`messages_per_s` per replica is shared by its running streams: a stream's tokens are held until
`num_running / messages_per_s` seconds have passed since its last message, then sent together. A stream running
alone is never held, so ITL at low load is untouched; the first decoded token and the last are never held (TTFT
and end-to-end latency are untouched at any load).

No asyncio, no clock of its own: the caller passes the time, so tests drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

Token = TypeVar("Token")  # what the stream sends per token: its id, or its id with its log-probabilities


@dataclass
class StreamPacer(Generic[Token]):
    """One stream's held tokens. `messages_per_s` <= 0 sends every token at once."""

    messages_per_s: float
    pending: list[Token] = field(default_factory=list)
    last_sent_s: float | None = None  # monotonic time of the last message; None before the first

    def offer(self, token: Token, finished: bool, num_running: int, now_s: float) -> list[Token] | None:
        """Add one decoded token; returns the tokens to send now (in order), or None to hold them. `num_running`:
        the streams sharing the replica's budget this step."""
        self.pending.append(token)
        if not finished and self.last_sent_s is not None and self.messages_per_s > 0 and num_running > 1:
            interval_s = num_running / self.messages_per_s
            if now_s - self.last_sent_s < interval_s:
                return None
        tokens, self.pending, self.last_sent_s = self.pending, [], now_s
        return tokens

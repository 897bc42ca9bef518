"""What a request asks of sampling, its random numbers, and the log-probabilities it may get back: pure Python (the
scheduler holds these; no torch here).

Randomness is counter-based: the uniform a request's token `index` uses on its `draw`-th try is a hash of
(seed, index, draw). Nothing is carried from one token to the next, so a seeded request draws the same numbers
whatever shares its batch, on whichever replica or device it runs, and the prefill pool hands the decode pool only
the seed (`PrefillResult.seed`).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

MAX_SEED = (1 << 64) - 1
MAX_LOGPROBS = 20  # alternatives a request may ask for at each position (OpenAI's top_logprobs limit)
LOGPROB_FLOOR = -9999.0  # a token the model gives probability 0 (OpenAI's convention: JSON has no -inf)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_p 1 and top_k 0 mean no cut; seed None means a fresh random seed.

    With both cuts, top-k comes first and top-p applies to the k tokens' renormalised distribution (as Hugging Face
    and vLLM do)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()  # end the request like EOS (the token is kept)
    ignore_eos: bool = False              # the model's EOS tokens do not end it
    logprobs: int | None = None           # None: none; N: each token's log-probability and the N most likely's

    def __post_init__(self):
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: no top-k cut), got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer in [0, 2**64 - 1] or None, got {self.seed!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not isinstance(self.stop_token_ids, tuple) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be a tuple of token ids >= 0, got {self.stop_token_ids!r}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")

    def ends(self, token_id: int, eos_token_ids: frozenset[int]) -> bool:
        """Whether sampling `token_id` ends the request (finish reason stop)."""
        return token_id in self.stop_token_ids or (not self.ignore_eos and token_id in eos_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def resolved_seed(self) -> int:
        """The seed to sample with: the request's own, or a fresh random one (drawn once per request, then carried)."""
        return self.seed if self.seed is not None else secrets.randbits(64)


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log-probability, and the `top` most likely tokens at its position (most likely first),
    under the distribution of the model that produced it (the full model for the first token, the decoder after):
    its softmax before temperature, top-k and top-p, as vLLM and OpenAI report them."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability) pairs


# ---- counter-based uniforms -----------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers whose outputs look independent for nearby inputs."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform(seed: int, index: int, draw: int = 0) -> float:
    """A number in (0, 1) for token `index` of the request seeded `seed`, try `draw`: 24 random bits, the
    resolution a float32 probability can use."""
    counter = ((index & 0xFFFFFFFF) << 16 | (draw & 0xFFFF)) + _GOLDEN
    bits = _mix64(_mix64((seed + _GOLDEN) & _MASK64) ^ _mix64(counter & _MASK64))
    return ((bits >> 40) + 0.5) / (1 << 24)

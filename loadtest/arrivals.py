"""When requests are sent: send times (seconds after the benchmark starts) for `vllm bench serve`'s arrival process.

Gaps between requests are gamma distributed with shape `burstiness` and mean 1/rate, so their squared coefficient of
variation is 1/burstiness: burstiness 1 is a Poisson process, below 1 burstier, above 1 more regular, inf a fixed
gap. An infinite rate sends everything at time 0. A ramp-up changes the rate with the request's index, linearly or
exponentially from `start_rps` to `end_rps`. As in vLLM, the first request waits one gap, and without a ramp-up
the times are rescaled so that the last one falls exactly at num_requests / rate (this keeps the achieved rate
from drifting 1-2% between seeds; it scales every gap by the same factor, so burstiness is unchanged).

Step loads (`stage_send_times`) run one such process per stage, for the stage's duration, restarting at each
stage boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RAMP_UP_STRATEGIES = ("linear", "exponential")


@dataclass(frozen=True)
class RampUp:
    strategy: str           # "linear" or "exponential"
    start_rps: float
    end_rps: float

    def __post_init__(self):
        if self.strategy not in RAMP_UP_STRATEGIES:
            raise ValueError(f"--ramp-up-strategy must be one of {', '.join(RAMP_UP_STRATEGIES)}, "
                             f"got {self.strategy!r}")
        for name, value in (("--ramp-up-start-rps", self.start_rps), ("--ramp-up-end-rps", self.end_rps)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite rate > 0, got {value}")
        if self.start_rps > self.end_rps:
            raise ValueError(f"--ramp-up-start-rps ({self.start_rps}) must not exceed --ramp-up-end-rps "
                             f"({self.end_rps})")

    def rate_at(self, index: int, num_requests: int) -> float:
        """The rate for request `index` of `num_requests`: start at the first, end at the last."""
        progress = index / max(num_requests - 1, 1)
        if self.strategy == "linear":
            return self.start_rps + (self.end_rps - self.start_rps) * progress
        return self.start_rps * (self.end_rps / self.start_rps) ** progress


@dataclass(frozen=True)
class Stage:
    """One stage of a step load: `rate` requests/s (0 = none, e.g. to watch the pools scale down) for `duration_s`."""
    rate: float
    duration_s: float


def check_rate(rate: float, burstiness: float) -> None:
    if math.isnan(rate) or rate <= 0:
        raise ValueError(f"--request-rate must be > 0 (inf sends all requests at once), got {rate}")
    if math.isnan(burstiness) or burstiness <= 0:
        raise ValueError(f"--burstiness must be > 0 (1 = Poisson, inf = fixed gaps), got {burstiness}")


def gaps(rates: np.ndarray, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """One gap per rate: gamma(shape=burstiness, scale=1/(rate*burstiness)), mean 1/rate; 0 for an infinite rate."""
    # rates: [N] -> gaps: [N]
    finite = np.isfinite(rates)
    out = np.zeros(len(rates))
    if burstiness == math.inf:
        out[finite] = 1.0 / rates[finite]
    else:
        out[finite] = rng.gamma(shape=burstiness, scale=1.0 / (rates[finite] * burstiness))
    return out


def send_times(num_requests: int, request_rate: float = math.inf, burstiness: float = 1.0,
               ramp_up: RampUp | None = None, seed: int = 0) -> np.ndarray:
    """Send time of each request in seconds after the start, non-decreasing. Shape [num_requests]."""
    if num_requests < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {num_requests}")
    check_rate(request_rate if ramp_up is None else 1.0, burstiness)
    rng = np.random.default_rng(seed)
    if ramp_up is not None:
        rates = np.array([ramp_up.rate_at(i, num_requests) for i in range(num_requests)])
    else:
        rates = np.full(num_requests, float(request_rate))
    times = np.cumsum(gaps(rates, burstiness, rng))
    if ramp_up is None and times[-1] > 0:
        times *= (num_requests / request_rate) / times[-1]
    return times


def parse_stages(stages: list) -> list[Stage]:
    """`[{"rate": R, "duration": S}, ...]` (the --stages JSON) into Stages; errors name the stage and key."""
    if not isinstance(stages, list) or not stages:
        raise ValueError('--stages must be a non-empty JSON list like [{"rate": 2, "duration": 30}]')
    parsed = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or set(stage) != {"rate", "duration"}:
            raise ValueError(f'--stages[{i}] must be an object with exactly the keys "rate" and "duration", '
                             f"got {stage!r}")
        rate, duration = stage["rate"], stage["duration"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
            raise ValueError(f"--stages[{i}].rate must be a finite number >= 0 (requests/s), got {rate!r}")
        if (isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration)
                or duration <= 0):
            raise ValueError(f"--stages[{i}].duration must be a finite number > 0 (seconds), got {duration!r}")
        parsed.append(Stage(float(rate), float(duration)))
    return parsed


def stage_send_times(stages: list[Stage], burstiness: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Send times for a step load and the stage index of each request. Within a stage the gaps follow the
    arrival process at the stage's rate, from the stage's start, and stop at its end (so the count is random: a
    Poisson count for burstiness 1)."""
    check_rate(1.0, burstiness)
    rng = np.random.default_rng(seed)
    times, stage_ids, start = [], [], 0.0
    for index, stage in enumerate(stages):
        end = start + stage.duration_s
        if stage.rate > 0:
            t = start
            # Draw gaps in blocks of about the expected count until the stage is over.
            block = max(16, int(stage.rate * stage.duration_s * 1.2))
            while t < end:
                steps = np.cumsum(gaps(np.full(block, stage.rate), burstiness, rng)) + t
                inside = steps[steps < end]
                times.extend(inside.tolist())
                stage_ids.extend([index] * len(inside))
                t = steps[-1]
        start = end
    return np.array(times, dtype=float), np.array(stage_ids, dtype=int)

"""One benchmark run: send each request at its arrival time (at most --max-concurrency in flight), after the
warm-ups, with a live progress line, and sample the run once a second (concurrency, output tokens/s, replicas per
pool from the service's Health). Returns the raw records; `metrics` and `result` turn them into numbers.

    probe(connection)      -> ServiceInfo     (waits until SERVING; model and tokenizer names)

Either API (`Connection.backend`): the gRPC one (loadtest/client.py) or the OpenAI-compatible HTTP one
(loadtest/openai_client.py), through the same three calls: send a request, read the replicas, probe.
    run_benchmark(spec)    -> RunOutput
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from tqdm import tqdm

from loadtest.client import Connection, Progress, ServiceInfo, open_target
from loadtest.datasets import SampleRequest
from loadtest.records import RequestRecord


@dataclass
class RunSpec:
    connection: Connection
    samples: list[SampleRequest]
    send_times_s: np.ndarray               # [num requests] seconds after the start (arrivals.send_times)
    max_concurrency: int | None = None     # None = no limit
    num_warmups: int = 0                   # sent before the run (all at once, under the limit), not recorded
    request_timeout_s: float | None = 600.0
    temperature: float | None = None       # None = the service's default (greedy)
    request_id_prefix: str = "bench-"
    min_duration_s: float = 0.0            # keep sampling at least this long (a step load's idle stages)
    show_progress: bool = True
    on_start: Callable[[Progress, float], None] | None = None   # (live counters, origin) when the clock starts

    def __post_init__(self):
        if len(self.samples) != len(self.send_times_s):
            raise ValueError(f"{len(self.samples)} samples for {len(self.send_times_s)} send times")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.num_warmups < 0:
            raise ValueError(f"--num-warmups must be >= 0, got {self.num_warmups}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"--request-timeout must be > 0 seconds, got {self.request_timeout_s}")


@dataclass
class TimeSample:
    """The run at one moment (`time_s` after the start); rates are over the interval since the previous sample."""
    time_s: float
    concurrency: int                          # requests in flight now
    output_tokens_per_s: float
    sent_per_s: float
    completed_per_s: float
    failed_per_s: float
    replicas: dict[str, int] | None           # running replicas per pool (Health), None when not reported

    def as_json(self) -> dict:
        return {"time_s": round(self.time_s, 3), "concurrency": self.concurrency,
                "output_tokens_per_s": self.output_tokens_per_s, "sent_per_s": self.sent_per_s,
                "completed_per_s": self.completed_per_s, "failed_per_s": self.failed_per_s,
                "replicas": self.replicas}


@dataclass
class RunOutput:
    records: list[RequestRecord]
    duration_s: float
    started_at: datetime
    time_series: list[TimeSample]
    prompt_tokens: dict[int, int] = field(default_factory=dict)   # record index -> the service's prompt tokens
    warmup_failures: int = 0


async def probe(connection: Connection, ready_timeout_s: float = 60.0) -> ServiceInfo:
    """Wait until the service is ready, then ask what it serves (GrpcTarget.probe, OpenAITarget.probe)."""
    async with open_target(connection) as target:
        return await target.probe(ready_timeout_s)


async def run_benchmark(spec: RunSpec) -> RunOutput:
    async with open_target(spec.connection) as target:
        await target.connect()
        limit = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else contextlib.nullcontext()

        async def limited(sample: SampleRequest, record: RequestRecord, origin: float, progress: Progress,
                          prompt_tokens: dict) -> RequestRecord:
            async with limit:
                return await target.send(sample, record, origin, spec.request_timeout_s, spec.temperature, progress,
                                         prompt_tokens)

        # 1) Warm-ups: discarded, so that connection set-up and first-call costs stay out of the results.
        warmup_failures = 0
        if spec.num_warmups:
            origin, progress = time.perf_counter(), Progress()
            warmups = [limited(spec.samples[i % len(spec.samples)],
                               RequestRecord(i, f"{spec.request_id_prefix}warmup-{i}", 0, 0), origin, progress, {})
                       for i in range(spec.num_warmups)]
            warmup_failures = sum(not r.success for r in await asyncio.gather(*warmups))

        # 2) The run: one task per request, released at its send time; a sampler ticks every second.
        bar = tqdm(total=len(spec.samples), unit="req", file=sys.stderr, disable=not spec.show_progress,
                   dynamic_ncols=True)
        progress, prompt_tokens = Progress(), {}
        gc.collect()
        gc.freeze()  # what exists now is never garbage: fewer and shorter collector pauses during the run
        started_at, origin = datetime.now(), time.perf_counter()
        if spec.on_start is not None:
            spec.on_start(progress, origin)  # e.g. a soak's sampler thread, which reads the counters
        stop = asyncio.Event()
        time_series: list[TimeSample] = []
        sampler = asyncio.create_task(sample_every_second(target, progress, origin, stop, time_series, bar))
        tasks = []
        try:
            for index, (sample, at) in enumerate(zip(spec.samples, spec.send_times_s)):
                delay = origin + float(at) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                record = RequestRecord(index, f"{spec.request_id_prefix}{index}", sample.prompt_len,
                                       sample.max_tokens, scheduled_s=float(at))
                task = asyncio.create_task(limited(sample, record, origin, progress, prompt_tokens))
                task.add_done_callback(lambda _: bar.update(1))
                tasks.append(task)
            records = list(await asyncio.gather(*tasks))
            idle = origin + spec.min_duration_s - time.perf_counter()
            if idle > 0:
                await asyncio.sleep(idle)
            duration_s = time.perf_counter() - origin
        finally:
            for task in tasks:
                task.cancel()
            stop.set()
            await sampler
            bar.close()
            gc.unfreeze()
        return RunOutput(records, duration_s, started_at, time_series, prompt_tokens, warmup_failures)


async def sample_every_second(target, progress: Progress, origin: float, stop: asyncio.Event,
                              out: list[TimeSample], bar) -> None:
    """Append a TimeSample at 1 s, 2 s, ... after `origin`, and a last one when `stop` is set."""
    previous_time, previous = 0.0, (0, 0, 0, 0)
    tick = 1
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, origin + tick - time.perf_counter()))
        now = time.perf_counter() - origin
        counts = (progress.output_tokens, progress.sent, progress.completed, progress.failed)
        interval = now - previous_time
        if interval > 1e-3:
            rates = [(c - p) / interval for c, p in zip(counts, previous)]
            replicas = await target.replicas(timeout_s=0.8)
            out.append(TimeSample(now, progress.in_flight, *rates, replicas))
            bar.set_postfix(completed=progress.completed, failed=progress.failed,
                            rps=f"{rates[1]:.1f}", concurrency=progress.in_flight, refresh=False)
            previous_time, previous = now, counts
        if stop.is_set():
            return
        tick = max(tick + 1, math.floor(time.perf_counter() - origin) + 1)

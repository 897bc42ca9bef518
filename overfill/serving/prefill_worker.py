"""The prefill pool's engine: batch queued prompts up to a token budget, run the full model, sample the first token
and lease each request's KV to the decode pool. No Ray here; `services/prefill` wraps it.

Requests wait in a queue bounded in requests and in prompt tokens, and the KV the replica holds or will hold
(queued, running and leased prompts) has a token budget; over any bound: RESOURCE_EXHAUSTED at once, so a burst never
grows memory or waiting time without bound. A `Scheduler` (engine/scheduler.py) forms the batches: up to
`max_batch_tokens` prompt tokens and `max_batch_size` prompts (the staging cache's slots), always at least one
prompt. Every request hands off after its first token (`remote_decode`). The model runs on a single worker thread
so the event loop keeps accepting requests (and the KV service keeps serving pulls) meanwhile; the scheduler lives
on the event loop.

The same watchdog as decode's (decode_worker.py): a batch that runs past `max_batch_s` fails its requests with
DEADLINE_EXCEEDED at once (its staging slots are freed when the model thread returns: it cannot be interrupted), and
while it still runs the replica refuses new requests with UNAVAILABLE rather than queue them behind a wedged device.
A batch still running after `unhealthy_batch_s` makes `check_health` fail, so Ray Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling_params import TokenLogprobs
from overfill.engine.scheduler import Event, QueueFull, Request, Scheduler, SchedulerConfig, StepPlan
from overfill.engine.step import ModelStep, run
from overfill.serving.types import PrefillRequest, PrefillResult, ServiceError
from overfill.status import StatusCode
from overfill.transport.base import KVSender

if TYPE_CHECKING:  # not imported at run time: the GPU machine runs this worker without OpenTelemetry
    from opentelemetry.trace import Span

    from overfill.serving.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillSettings:
    max_seq_len: int = 2048          # the most prompt + generated tokens one request may use
    max_batch_tokens: int = 4096     # prompt tokens per prefill batch
    max_batch_size: int = 16         # prompts per prefill batch (KV slots of the staging cache)
    max_queued_requests: int = 256   # requests waiting beyond the free staging slots; more are refused
    max_queued_tokens: int = 32768   # prompt tokens waiting; more are refused with RESOURCE_EXHAUSTED
    max_leased_tokens: int = 65536   # prompt tokens queued + running + leased (this replica's KV); likewise
    max_batch_s: float = 60.0        # a batch running longer fails its requests with DEADLINE_EXCEEDED
    unhealthy_batch_s: float = 300.0  # a batch running longer makes check_health fail (the replica is replaced)


@dataclass
class _Waiter:
    """A caller waiting for its ticket."""

    future: asyncio.Future
    num_prompt_tokens: int
    seed: int
    enqueued_at: float
    trace_context: dict[str, str] | None = None  # the router's prefill span, when traced
    batch_span: Span | None = None  # the span of the batch it runs in, from the batch's start to its answer


@dataclass
class _Prefilled:
    """What the model thread hands back for one row: its first token (None: non-finite logits) and a copy of its KV."""

    token: int | None
    logprobs: TokenLogprobs | None  # when the request asks
    k: torch.Tensor  # [L, H, T, D]
    v: torch.Tensor  # [L, H, T, D]


class PrefillWorker:
    def __init__(self, runner: ModelRunner, sender: KVSender, eos_token_ids: set[int], settings: PrefillSettings,
                 tracing: Tracing | None = None):
        """`tracing`: where the spans of traced requests' batches go (overfill/serving/tracing.py); None: no spans."""
        self.runner, self.sender, self.eos_token_ids, self.settings = runner, sender, set(eos_token_ids), settings
        self.tracing = tracing
        self.cache = KVCache(CacheSpec.for_geometry(runner.geometry, settings.max_batch_size, settings.max_seq_len,
                                                    runner.dtype, runner.device))
        self.step = ModelStep(runner, self.cache)
        self.scheduler = Scheduler(SchedulerConfig(eos_token_ids=frozenset(eos_token_ids),
                                                   max_prefill_tokens=settings.max_batch_tokens,
                                                   max_waiting=settings.max_queued_requests,
                                                   max_waiting_tokens=settings.max_queued_tokens), self.cache.pool)
        self._waiters: dict[str, _Waiter] = {}  # request id -> its caller, until its ticket or error
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefill-model")
        self.num_running = 0
        self._running_tokens = 0
        self.num_prefilled = 0
        self._batch_started_at: float | None = None  # monotonic time the running batch began; None between batches

    # ---- public ------------------------------------------------------------------------------------------------

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        """Queue one prompt and wait for its ticket. Cancelling the caller drops it from the queue or frees its KV."""
        num_tokens = len(request.prompt_ids)
        if num_tokens + 1 > self.settings.max_seq_len:
            raise ServiceError(StatusCode.RESOURCE_EXHAUSTED, f"prompt has {num_tokens} tokens; the context holds "
                                                              f"{self.settings.max_seq_len} with the generated ones")
        held = self.scheduler.num_waiting_tokens + self._running_tokens + self.sender.leases.num_tokens
        if held + num_tokens > self.settings.max_leased_tokens:
            raise ServiceError(StatusCode.RESOURCE_EXHAUSTED, f"prefill KV budget is spent ({held} prompt tokens "
                                                              f"queued, running or leased, {num_tokens} more exceed "
                                                              f"{self.settings.max_leased_tokens})")
        rid, seed = request.request_id, request.sampling.resolved_seed()
        stuck_s = self._stuck_batch_s()
        if stuck_s:
            raise ServiceError(StatusCode.UNAVAILABLE, f"prefill replica refused request {rid!r}: its model thread is "
                                                       f"held by a batch running {stuck_s:.0f} s, past "
                                                       f"prefill.max_batch_s = {self.settings.max_batch_s:g} s")
        try:
            self.scheduler.add(Request.to_prefill(rid, request.prompt_ids, request.sampling, seed, remote_decode=True))
        except QueueFull as e:
            raise ServiceError(e.code, f"prefill {e}") from None
        except ValueError as e:  # the same request id twice
            raise ServiceError(StatusCode.INVALID_ARGUMENT, str(e)) from None
        self._ensure_running()
        waiter = self._waiters[rid] = _Waiter(asyncio.get_running_loop().create_future(), num_tokens, seed,
                                              time.perf_counter(), request.trace_context)
        self._wakeup.set()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self.scheduler.cancel(rid)  # waiting: gone; in the batch running: its KV is never leased
            if self._waiters.get(rid) is waiter:
                del self._waiters[rid]
                self._end_batch_span(waiter, StatusCode.CANCELLED)
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release(waiter.future.result())  # the ticket was ready as the caller left
            raise

    def stats(self) -> dict:
        return {
            "queued_prompt_tokens": self.scheduler.num_waiting_tokens,
            "leased_tokens": self.sender.leases.num_tokens,
            "num_waiting": self.scheduler.num_waiting,
            "num_running": self.num_running,
            "num_leases": self.sender.num_leases,
            "num_prefilled": self.num_prefilled,
            "stuck_batch_s": self._stuck_batch_s(),  # > 0: refuses new requests; the prefill router ranks it last
        }

    def check_health(self) -> None:
        """Raises while the model thread is held by one batch for longer than `unhealthy_batch_s`."""
        running_s = self._batch_running_s()
        if running_s > self.settings.unhealthy_batch_s:
            raise RuntimeError(f"a prefill batch has been running for {running_s:.0f} s, past "
                               f"prefill.unhealthy_batch_s = {self.settings.unhealthy_batch_s:g} s: the model thread "
                               f"is stuck")

    def _batch_running_s(self) -> float:
        started = self._batch_started_at
        return 0.0 if started is None else time.monotonic() - started

    def _stuck_batch_s(self) -> float:
        """How long the running batch has been running, if past max_batch_s (its requests were failed); else 0."""
        running_s = self._batch_running_s()
        return running_s if running_s > self.settings.max_batch_s else 0.0

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the batch loop ----------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="prefill-batches")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # 1) Plan the next batch (this also gives back the previous batch's staging slots).
            plan = self.scheduler.schedule()
            if not plan.prefill:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self.num_running = len(plan.prefill)
            self._running_tokens = sum(len(row.token_ids) for row in plan.prefill)
            if self.tracing is not None:
                self._start_batch_spans(plan)
            try:
                # 2) Run it on the model thread, within max_batch_s: first tokens, and a copy of each row's KV.
                self._batch_started_at = time.monotonic()
                batch = loop.run_in_executor(self._executor, self._prefill_batch, plan)
                try:
                    rows = await asyncio.wait_for(asyncio.shield(batch), self.settings.max_batch_s)
                except TimeoutError:  # fail the callers now; the staging slots stay taken until the thread lets go
                    log.error("prefill batch of %d ran past %g s", len(plan.prefill), self.settings.max_batch_s)
                    message = f"the prefill batch ran past prefill.max_batch_s = {self.settings.max_batch_s:g} s"
                    self._answer(self.scheduler.fail_step(plan, StatusCode.DEADLINE_EXCEEDED, message), {})
                    await asyncio.wait([batch])
                    continue
                except Exception as e:  # a failed batch fails its requests, never the worker
                    log.exception("prefill batch of %d failed", len(plan.prefill))
                    message = f"prefill failed: {type(e).__name__} (the prefill replica's log has the details)"
                    self._answer(self.scheduler.fail_step(plan, StatusCode.INTERNAL, message), {})
                    continue
                finally:
                    self._batch_started_at = None
                # 3) Finish reasons, then lease the KV of every request that continues in the decode pool.
                events = self.scheduler.update(plan, [row.token for row in rows],
                                               logprobs=[row.logprobs for row in rows])
                prefilled = {r.request_id: row for r, row in zip(plan.prefill, rows)}
                handoffs = {e.request_id: prefilled[e.request_id] for e in events if e.handoff}
                try:
                    tickets = await loop.run_in_executor(self._executor, self._publish, handoffs) if handoffs else {}
                except Exception as e:  # the sender failed: these requests fail, the worker goes on
                    log.exception("leasing the KV of %d requests failed", len(handoffs))
                    message = (f"prefill failed: leasing its KV failed with {type(e).__name__} (the prefill replica's "
                               f"log has the details)")
                    tickets = {rid: ServiceError(StatusCode.INTERNAL, message) for rid in handoffs}
                self._answer(events, tickets)
            finally:
                self.num_running = self._running_tokens = 0

    def _prefill_batch(self, plan: StepPlan) -> list[_Prefilled]:
        """On the model thread: one right-padded forward, first tokens sampled, each row's KV copied out of its slot
        (the copy a lease will own, if the scheduler hands the request off; the slot is reused from the next
        batch)."""
        out = run(plan, self.step, None)
        return [_Prefilled(token, logprobs, *self.cache.export_slot(row.slot))
                for row, token, logprobs in zip(plan.prefill, out.tokens, out.logprobs)]

    def _publish(self, handoffs: dict[str, _Prefilled]) -> dict[str, object]:
        """On the model thread (the one that wrote the KV; see KVSender.publish): a lease per request, or the
        ServiceError of a request id already leased. Raises, holding no lease, when the sender fails."""
        tickets = {}
        try:
            for rid, row in handoffs.items():
                try:
                    tickets[rid] = self.sender.publish(rid, row.k, row.v)
                except KeyError:
                    tickets[rid] = ServiceError(StatusCode.INVALID_ARGUMENT,
                                                f"request_id {rid!r} is already in flight")
        except Exception:  # the batch fails as a whole: the leases published before the failure go too
            for rid, ticket in tickets.items():
                if not isinstance(ticket, ServiceError):
                    self.sender.release(rid)
            raise
        return tickets

    def _answer(self, events: list[Event], tickets: dict[str, object]) -> None:
        """Answer each request of the batch: its ticket, its first token alone (it ended there), or its error."""
        now = time.perf_counter()
        for event in events:
            rid = event.request_id
            waiter, ticket = self._waiters.pop(rid, None), tickets.get(rid)
            if event.status is not None:
                outcome = ServiceError(event.status, f"{event.message} (request {rid!r})")
            elif isinstance(ticket, ServiceError):
                outcome = ticket
            else:
                outcome = PrefillResult(request_id=rid, ticket=ticket, first_token=event.token_id,
                                        prompt_tokens=waiter.num_prompt_tokens if waiter else 0,
                                        finish_reason=event.finish_reason, seed=waiter.seed if waiter else 0,
                                        prefill_s=now - waiter.enqueued_at if waiter else 0.0,
                                        first_logprobs=event.logprobs)
            if waiter is not None:
                self._end_batch_span(waiter, outcome.code if isinstance(outcome, ServiceError) else None)
            if waiter is None or waiter.future.done():  # the caller went away meanwhile: free what it would hold
                if isinstance(outcome, PrefillResult):
                    self._release(outcome)
            elif isinstance(outcome, ServiceError):
                waiter.future.set_exception(outcome)
            else:
                waiter.future.set_result(outcome)
                self.num_prefilled += 1

    # ---- tracing ---------------------------------------------------------------------------------------------------

    def _start_batch_spans(self, plan: StepPlan) -> None:
        """A `prefill.batch` span for each traced request of the batch starting now, in its own trace (a batch
        serves requests of many traces): the batch's forward and the lease of its KV, until its answer."""
        now = time.perf_counter()
        batch = {"overfill.batch.size": len(plan.prefill), "overfill.batch.prompt_tokens": self._running_tokens}
        for row in plan.prefill:
            waiter = self._waiters.get(row.request_id)
            if waiter is not None and waiter.trace_context is not None:
                waiter.batch_span = self.tracing.start("prefill.batch", waiter.trace_context, {
                    **batch, "overfill.prompt_tokens": len(row.token_ids),
                    "overfill.queued_s": round(now - waiter.enqueued_at, 6)})

    def _end_batch_span(self, waiter: _Waiter, code: StatusCode | None) -> None:
        if waiter.batch_span is not None:
            self.tracing.end(waiter.batch_span, code)
            waiter.batch_span = None

    def _release(self, result: PrefillResult) -> None:
        if result.ticket is not None:
            self.sender.release(result.request_id)

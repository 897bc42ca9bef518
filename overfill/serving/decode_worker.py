"""The decode pool's engine: continuous batching of sequences whose KV was prefilled elsewhere. No Ray here;
`services/decode` wraps it.

A `Scheduler` (engine/scheduler.py) holds the requests and the KV slots. A request is admitted when a slot is free
(the KV budget is `num_slots` slots of `max_seq_len` tokens); at most `max_waiting` more wait for one, beyond that
RESOURCE_EXHAUSTED. While a request waits, its lease at the prefill replica is renewed (lease_keeper.py), so waiting
longer than the lease TTL is no error; a lease found gone fails the request with ABORTED at once. Once it has its
slot, its KV is pulled from the prefill replica, copied into the slot and the lease released. A single background
loop then runs `schedule -> step -> update`: one forward per step for every running sequence; sequences join between
steps and leave as soon as they finish or their caller goes away, and their slot is given back at the next step
boundary. All cache work runs on one model thread; KV pulls run on other threads; the scheduler lives on the event
loop. A step that runs past `max_step_s` fails its sequences with DEADLINE_EXCEEDED at once; their slots are freed
when the step returns (the model thread cannot be interrupted). A step still running after `unhealthy_step_s` makes
`check_health` fail, so the replica's supervisor (Ray Serve) replaces a replica whose device never comes back.

A replica whose model thread has been held by one step for longer than `slow_step_s` says so in its stats
(`held_step_s`, which the decode request router ranks last) and refuses new requests before touching their KV
(`AdmissionRefused`), unless the caller says it is the pool's last choice (`last_choice`: every other replica
refused the request already), so that a pool of one replica still serves. Past `max_step_s` it refuses everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling_params import SamplingParams, TokenLogprobs
from overfill.engine.scheduler import Event, Load, QueueFull, Request, Scheduler, SchedulerConfig, StepPlan
from overfill.engine.step import ModelStep, StepOutput, run
from overfill.serving.lease_keeper import LeaseKeeper
from overfill.serving.stream_pacing import StreamPacer
from overfill.serving.types import AdmissionRefused, PrefillResult, ServiceError, TokenChunk
from overfill.status import StatusCode
from overfill.transport.base import KVReceiver, KVTransferError
from overfill.transport.wire import DTYPE_NAMES, KVLayout

if TYPE_CHECKING:  # not imported at run time: the GPU machine runs this worker without OpenTelemetry
    from overfill.serving.tracing import Tracing

log = logging.getLogger(__name__)

# What a client is told of a failed KV pull, by the transport's status; the transport's own message stays in the log.
PULL_FAILURES = {
    StatusCode.DEADLINE_EXCEEDED: "it did not finish within kv.transfer_timeout_s",
    StatusCode.UNAVAILABLE: "the prefill replica holding the KV could not be reached, or the link to it failed",
    StatusCode.DATA_LOSS: "the KV arrived incomplete or malformed",
    StatusCode.FAILED_PRECONDITION: "the leased KV's geometry or dtype is not the decoder's",
    StatusCode.UNAUTHENTICATED: "the prefill replica's KV service refused this replica's cluster secret",
}


@dataclass(frozen=True)
class DecodeSettings:
    num_slots: int = 16          # sequences decoded together at most (the KV budget, in sequences)
    max_seq_len: int = 2048      # tokens per slot: prompt + generated
    max_waiting: int = 64        # admitted-to-wait requests beyond the slots; more get RESOURCE_EXHAUSTED
    kv_pull_timeout_s: float = 30.0
    slow_step_s: float = 2.0     # a step running longer: new requests go elsewhere first (see the module docstring)
    max_step_s: float = 60.0     # a step running longer fails its sequences with DEADLINE_EXCEEDED
    unhealthy_step_s: float = 300.0  # a step running longer makes check_health fail (the replica is replaced)
    cuda_graphs: bool = False    # decode steps replayed from CUDA graphs (engine/cuda_graphs.py); CUDA only
    stream_messages_per_s: float = 0.0  # token messages/s shared by the running streams (stream_pacing.py); 0: all


@dataclass
class _Stream:
    """One caller's side of a request: its slot once granted, then its tokens (or its error)."""

    slot: asyncio.Future                                      # the KV slot, once the scheduler admits the request
    pacer: StreamPacer[tuple[int, TokenLogprobs | None]]      # holds its tokens while the replica's budget is spent
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # TokenChunk | ServiceError


class DecodeWorker:
    def __init__(self, runner: ModelRunner, receiver: KVReceiver, eos_token_ids: set[int], settings: DecodeSettings,
                 tracing: Tracing | None = None):
        """`tracing`: where the KV pull spans of traced requests go (overfill/serving/tracing.py); None: no spans."""
        self.runner, self.receiver, self.eos_token_ids, self.settings = runner, receiver, set(eos_token_ids), settings
        self.tracing = tracing
        self.cache = KVCache(CacheSpec.for_geometry(runner.geometry, settings.num_slots, settings.max_seq_len,
                                                    runner.dtype, runner.device))
        self.layout = KVLayout(runner.geometry.num_layers, runner.geometry.num_kv_heads, runner.geometry.head_dim,
                               DTYPE_NAMES[runner.dtype], 0)
        self.step = ModelStep(runner, self.cache, settings.cuda_graphs)  # graphs captured per bucket on first use
        self.scheduler = Scheduler(SchedulerConfig(eos_token_ids=frozenset(eos_token_ids),
                                                   max_waiting=settings.max_waiting), self.cache.pool)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-model")
        # Pulls run only for requests that hold a slot, so with a thread per slot no pull ever waits behind another
        # (one from a blackholed prefill replica holds its thread until its deadline). Releases have threads of
        # their own for the same reason.
        self._pull_threads = ThreadPoolExecutor(max_workers=settings.num_slots, thread_name_prefix="decode-kv-pull")
        self._release_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode-kv-release")
        self._renew_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode-kv-renew")
        self.lease_keeper = LeaseKeeper(receiver, self._renew_threads)  # renews the leases of waiting requests
        self._streams: dict[str, _Stream] = {}
        self._task: asyncio.Task | None = None
        self._work: asyncio.Event | None = None
        self._step_started_at: float | None = None  # monotonic time the running step began; None between steps
        self.num_finished = 0

    # ---- public ------------------------------------------------------------------------------------------------

    async def generate(self, prefill: PrefillResult, sampling: SamplingParams,
                       last_choice: bool = False) -> AsyncIterator[TokenChunk]:
        """Continue a prefilled request; yields token chunks, the last with its finish reason. Leaving early (the
        caller cancelled) frees the slot. `last_choice`: this replica refused the request once already and the pool
        had no other to offer, so a slow step does not refuse it (it waits for the step)."""
        rid = prefill.request_id
        if prefill.ticket is None:
            raise ServiceError(StatusCode.INVALID_ARGUMENT, f"request {rid!r} finished at prefill: nothing to decode")
        if prefill.prompt_tokens + sampling.max_new_tokens > self.settings.max_seq_len:
            raise ServiceError(StatusCode.RESOURCE_EXHAUSTED, f"prompt ({prefill.prompt_tokens}) + max_tokens "
                                                              f"({sampling.max_new_tokens}) exceeds "
                                                              f"{self.settings.max_seq_len}")
        held_s = self._step_running_s()
        if held_s > self.settings.max_step_s:
            raise AdmissionRefused(StatusCode.UNAVAILABLE, f"decode replica refused request {rid!r}: its model "
                                                           f"thread is held by a step running {held_s:.0f} s, past "
                                                           f"decode.max_step_s = {self.settings.max_step_s:g} s")
        if held_s > self.settings.slow_step_s and not last_choice:
            raise AdmissionRefused(StatusCode.UNAVAILABLE, f"decode replica refused request {rid!r}: its model "
                                                           f"thread is held by a step running {held_s:.1f} s, past "
                                                           f"decode.slow_step_s = {self.settings.slow_step_s:g} s")
        self._ensure_running()
        try:
            self.scheduler.add(Request.prefilled(rid, prefill.prompt_tokens, prefill.first_token, sampling,
                                                 prefill.seed))
        except QueueFull:
            raise AdmissionRefused(StatusCode.RESOURCE_EXHAUSTED, f"decode replica is full ({self.settings.num_slots} "
                                                                  f"running, {self.scheduler.num_waiting} waiting)"
                                   ) from None
        except ValueError as e:  # the same lease id twice
            raise ServiceError(StatusCode.INVALID_ARGUMENT, str(e)) from None
        stream = self._streams[rid] = _Stream(asyncio.get_running_loop().create_future(),
                                              StreamPacer(self.settings.stream_messages_per_s))
        try:
            # 1) A slot: at once if one is free, else after waiting for one (the lease renewed meanwhile).
            admitted = time.perf_counter()
            slot = await self._slot_for(prefill, stream)
            # 2) Pull the KV into the slot and release the lease.
            start = time.perf_counter()
            with self._pull_span(prefill, slot_wait_s=start - admitted):
                await self._pull_into(slot, prefill)
            pulled_s = time.perf_counter() - start
            # 3) Join the running batch, and stream what the loop produces.
            self.scheduler.loaded(rid)
            self._work.set()
            first = True
            while True:
                chunk = self._coalesce(await stream.out.get(), stream.out)
                if isinstance(chunk, Exception):
                    raise chunk
                if first:
                    chunk = dataclasses.replace(chunk, kv_transfer_s=pulled_s)
                    first = False
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            del self._streams[rid]
            if self.scheduler.cancel(rid):  # still held: its slot is given back at the next step boundary
                self._work.set()

    @staticmethod
    def _coalesce(chunk: TokenChunk | Exception, queue: asyncio.Queue) -> TokenChunk | Exception:
        """Merge every chunk already waiting into one, so a slow consumer gets fewer, larger messages."""
        while isinstance(chunk, TokenChunk) and chunk.finish_reason is None and not queue.empty():
            following = queue.get_nowait()
            if isinstance(following, Exception):
                return following
            logprobs = None if chunk.logprobs is None else chunk.logprobs + following.logprobs
            chunk = TokenChunk(chunk.token_ids + following.token_ids, following.finish_reason, logprobs=logprobs)
        return chunk

    def stats(self) -> dict:
        used = self.cache.num_used_slots
        return {
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "num_free_slots": self.cache.num_free_slots,
            "kv_cache_usage": used / self.settings.num_slots,
            "num_finished": self.num_finished,
            "num_leases_kept": self.lease_keeper.num_kept,
            "num_leases_lost_waiting": self.lease_keeper.num_lost,
            "held_step_s": self._held_step_s(),    # > 0: refuses first choices; the decode router ranks it last
            "stuck_step_s": self._stuck_step_s(),  # > 0: admits nothing
        }

    def check_health(self) -> None:
        """Raises while the model thread is held by one step for longer than `unhealthy_step_s`."""
        running_s = self._step_running_s()
        if running_s > self.settings.unhealthy_step_s:
            raise RuntimeError(f"a decode step has been running for {running_s:.0f} s, past decode.unhealthy_step_s "
                               f"= {self.settings.unhealthy_step_s:g} s: the model thread is stuck")

    def _step_running_s(self) -> float:
        started = self._step_started_at
        return 0.0 if started is None else time.monotonic() - started

    def _held_step_s(self) -> float:
        """How long the running step has been running, if past slow_step_s; else 0."""
        running_s = self._step_running_s()
        return running_s if running_s > self.settings.slow_step_s else 0.0

    def _stuck_step_s(self) -> float:
        """How long the running step has been running, if past max_step_s (its requests were failed); else 0."""
        running_s = self._step_running_s()
        return running_s if running_s > self.settings.max_step_s else 0.0

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._pull_threads.shutdown(wait=False, cancel_futures=True)
        self._release_threads.shutdown(wait=False, cancel_futures=True)
        self.lease_keeper.close()
        self._renew_threads.shutdown(wait=False, cancel_futures=True)

    # ---- admission and KV ----------------------------------------------------------------------------------------

    async def _slot_for(self, prefill: PrefillResult, stream: _Stream) -> int:
        """The request's KV slot: at once if one is free, else once the scheduler admits it, while the lease keeper
        renews its lease; ABORTED as soon as the lease is gone. Renewal stops when this returns or raises (slot
        granted, lease lost, caller cancelled)."""
        self._grant(self.scheduler.admit())
        if stream.slot.done():
            return stream.slot.result()
        kept = self.lease_keeper.keep(prefill.ticket)
        try:
            await asyncio.wait([stream.slot, kept.lost], return_when=asyncio.FIRST_COMPLETED)
            if stream.slot.done():
                return stream.slot.result()
            raise kept.lost.result()
        finally:
            self.lease_keeper.stop(kept)

    def _grant(self, loads: list[Load]) -> None:
        """Hand admitted requests their slots (each caller then pulls its KV into it)."""
        for load in loads:
            self._streams[load.request_id].slot.set_result(load.slot)

    def _pull_span(self, prefill: PrefillResult, slot_wait_s: float) -> AbstractContextManager:
        """The `kv_pull` span of a traced request (the pull, the copy into its slot, the lease's release), in the
        request's trace; nothing for an untraced one."""
        if self.tracing is None or prefill.trace_context is None:
            return nullcontext()
        layout = prefill.ticket.layout
        return self.tracing.span("kv_pull", prefill.trace_context, {
            "overfill.lease_id": prefill.request_id, "overfill.kv.tokens": layout.num_tokens,
            "overfill.kv.bytes": layout.total_bytes, "overfill.slot_wait_s": round(slot_wait_s, 6)})

    async def _pull_into(self, slot: int, prefill: PrefillResult) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.kv_pull_timeout_s

        def pull():  # the deadline counts from the request, not from when a thread takes the pull up
            return self.receiver.pull(prefill.ticket, self.layout, max(deadline - time.monotonic(), 1e-3))

        try:
            k, v = await loop.run_in_executor(self._pull_threads, pull)
        except KVTransferError as e:
            # The transport's own words name replicas' addresses: they go to this replica's log, not to the client.
            log.warning("KV pull for request %s failed: %s", prefill.request_id, e)
            if e.code is StatusCode.NOT_FOUND:  # the lease expired (or was released) before the pull reached it
                raise ServiceError(StatusCode.ABORTED, f"the KV of request {prefill.request_id!r} was no longer "
                                                       f"leased when decode pulled it (lease expired or released)"
                                   ) from e
            code = StatusCode.DEADLINE_EXCEEDED if e.code is StatusCode.DEADLINE_EXCEEDED else StatusCode.UNAVAILABLE
            reason = PULL_FAILURES.get(e.code, "the KV transfer failed")
            raise ServiceError(code, f"KV pull for request {prefill.request_id!r} failed ({e.code}): {reason}") from e
        copy = self._model_thread.submit(self.cache.import_slot, slot, k, v)
        imported = asyncio.wrap_future(copy)
        try:
            await asyncio.shield(imported)
        except asyncio.CancelledError:  # the slot goes back only once nothing writes into it any more:
            if not copy.cancel():       # a copy not started yet never starts; one under way ends first
                await asyncio.wait([imported])
            raise
        finally:  # the KV is copied out, whatever happens next: its lease can go
            try:
                await loop.run_in_executor(self._release_threads, self.receiver.release, prefill.ticket)
            except KVTransferError as e:  # an unreleased lease expires on its own
                log.warning("could not release KV lease of %s: %s", prefill.request_id, e)

    # ---- the step loop -----------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._work = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="decode-steps")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # 1) Plan: give back the slots of sequences gone, admit waiting requests into them, list the rows.
            plan = self.scheduler.schedule()
            self._grant(plan.load)
            if not plan.decode:
                self._work.clear()
                await self._work.wait()
                continue
            # 2) One forward for every running sequence, on the model thread, within max_step_s.
            self._step_started_at = time.monotonic()
            step = loop.run_in_executor(self._model_thread, self._step, plan)
            try:
                out = await asyncio.wait_for(asyncio.shield(step), self.settings.max_step_s)
            except TimeoutError:  # fail the clients now; the slots stay taken until the model thread lets go
                log.error("decode step of %d sequences ran past %g s", len(plan.decode), self.settings.max_step_s)
                message = f"the decode step ran past decode.max_step_s = {self.settings.max_step_s:g} s"
                self._publish(self.scheduler.fail_step(plan, StatusCode.DEADLINE_EXCEEDED, message))
                await asyncio.wait([step])
                continue
            except Exception as e:  # a failed step fails its sequences, never the worker
                log.exception("decode step of %d sequences failed", len(plan.decode))
                message = f"decode step failed: {type(e).__name__} (the decode replica's log has the details)"
                self._publish(self.scheduler.fail_step(plan, StatusCode.INTERNAL, message))
                continue
            finally:
                self._step_started_at = None
            # 3) Tokens, finishes and failures out to the streams.
            self._publish(self.scheduler.update(plan, out.tokens, logprobs=out.logprobs))

    def _publish(self, events: list[Event]) -> None:
        now_s = time.monotonic()
        num_running = sum(event.status is None for event in events)  # the streams sharing the message budget
        for event in events:
            stream = self._streams.get(event.request_id)
            if event.finish_reason is not None:
                self.num_finished += 1
            if stream is None:  # its caller is gone
                continue
            if event.status is not None:
                stream.out.put_nowait(ServiceError(event.status, f"{event.message} (request {event.request_id!r})"))
                continue
            tokens = stream.pacer.offer((event.token_id, event.logprobs), event.finish_reason is not None,
                                        num_running, now_s)
            if tokens is not None:
                logprobs = [lp for _, lp in tokens] if event.logprobs is not None else None
                stream.out.put_nowait(TokenChunk([t for t, _ in tokens], event.finish_reason, logprobs=logprobs))

    def _step(self, plan: StepPlan) -> StepOutput:
        """On the model thread: one forward for every running sequence, one token each. (Fault tests wrap it with a
        step that stalls: tests/faults/chaos.py.)"""
        return run(plan, None, self.step)

"""The decode pool's engine: continuous batching of sequences whose KV was prefilled elsewhere. No Ray here;
`services/decode` wraps it.

A request is admitted only when a KV slot is free (the KV budget is `num_slots` slots of `max_seq_len` tokens); at
most `max_waiting` more wait for one, beyond that RESOURCE_EXHAUSTED. While a request waits, its lease at the prefill
replica is renewed (lease_keeper.py), so waiting longer than the lease TTL is no error; a lease found gone fails the
request with ABORTED at once. Once it has its slot, its KV is pulled from the prefill replica, copied into the slot
and the lease released. A single background loop then runs one forward per step for
every active sequence: sequences join between steps and leave as soon as they finish or their caller goes away, and
their slot is freed at that step boundary. All cache work runs on one model thread; KV pulls run on other threads.
A step that runs past `max_step_s` fails its sequences with DEADLINE_EXCEEDED at once; their slots are freed when
the step returns (the model thread cannot be interrupted). A step still running after `unhealthy_step_s` makes
`check_health` fail, so the replica's supervisor (Ray Serve) replaces a replica whose device never comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from overfill.engine.cuda_graphs import GraphDecoder
from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams, sample
from overfill.serving.faults import FaultPlan
from overfill.serving.lease_keeper import LeaseKeeper
from overfill.serving.types import AdmissionRefused, PrefillResult, ServiceError, TokenChunk
from overfill.transport.base import KVReceiver, KVTransferError
from overfill.transport.wire import DTYPE_NAMES, KVLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings:
    num_slots: int = 16          # sequences decoded together at most (the KV budget, in sequences)
    max_seq_len: int = 2048      # tokens per slot: prompt + generated
    max_waiting: int = 64        # admitted-to-wait requests beyond the slots; more get RESOURCE_EXHAUSTED
    kv_pull_timeout_s: float = 30.0
    max_step_s: float = 60.0     # a step running longer fails its sequences with DEADLINE_EXCEEDED
    unhealthy_step_s: float = 300.0  # a step running longer makes check_health fail (the replica is replaced)
    cuda_graphs: bool = False    # decode steps replayed from CUDA graphs (engine/cuda_graphs.py); CUDA only


@dataclass
class _Sequence:
    request_id: str
    slot: int
    sampling: SamplingParams
    generator: torch.Generator
    last_token: int
    num_generated: int           # tokens so far, the prefill's first one included
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    faults: FaultPlan | None = None  # test-only chaos hooks (overfill/serving/faults.py)


class DecodeWorker:
    def __init__(self, runner: ModelRunner, receiver: KVReceiver, eos_token_ids: set[int], settings: DecodeSettings):
        self.runner, self.receiver, self.eos_token_ids, self.settings = runner, receiver, set(eos_token_ids), settings
        self.cache = KVCache(CacheSpec.for_geometry(runner.geometry, settings.num_slots, settings.max_seq_len,
                                                    runner.dtype, runner.device))
        self.layout = KVLayout(runner.geometry.num_layers, runner.geometry.num_kv_heads, runner.geometry.head_dim,
                               DTYPE_NAMES[runner.dtype], 0)
        use_graphs = settings.cuda_graphs and torch.device(runner.device).type == "cuda"
        self._graphs = GraphDecoder(runner, self.cache) if use_graphs else None  # captured per bucket on first use
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-model")
        self._pull_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="decode-kv-pull")
        self._renew_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode-kv-renew")
        self.lease_keeper = LeaseKeeper(receiver, self._renew_threads)  # renews the leases of waiting requests
        self._active: list[_Sequence] = []
        self._free_slots: asyncio.Semaphore | None = None  # counts free KV slots; admission waits on it
        self._num_waiting = 0
        self._task: asyncio.Task | None = None
        self._work: asyncio.Event | None = None
        self._num_faulty = 0  # active sequences with a fault plan: only then does a step look for a stall
        self._refused_by_fault: set[str] = set()  # lease ids refused once by the refuse_admission fault
        self._step_started_at: float | None = None  # monotonic time the running step began; None between steps
        self.num_finished = 0

    # ---- public ------------------------------------------------------------------------------------------------

    async def generate(self, prefill: PrefillResult, sampling: SamplingParams,
                       faults: FaultPlan | None = None) -> AsyncIterator[TokenChunk]:
        """Continue a prefilled request; yields token chunks, the last with its finish reason. Leaving early (the
        caller cancelled) frees the slot. `faults`: test-only chaos hooks for this request (None in production)."""
        if prefill.ticket is None:
            raise ServiceError("INVALID_ARGUMENT", f"request {prefill.request_id!r} finished at prefill: nothing to decode")
        if prefill.prompt_tokens + sampling.max_new_tokens > self.settings.max_seq_len:
            raise ServiceError("RESOURCE_EXHAUSTED", f"prompt ({prefill.prompt_tokens}) + max_tokens "
                                                     f"({sampling.max_new_tokens}) exceeds {self.settings.max_seq_len}")
        stuck_s = self._stuck_step_s()
        if stuck_s > 0:
            raise AdmissionRefused("UNAVAILABLE", f"decode replica refused request {prefill.request_id!r}: its "
                                                  f"model thread is held by a step running {stuck_s:.0f} s, past "
                                                  f"decode.max_step_s = {self.settings.max_step_s:g} s")
        if faults is not None and faults.refuse_admission and prefill.request_id not in self._refused_by_fault:
            self._refused_by_fault.add(prefill.request_id)  # chaos: full this once, for this request only
            raise AdmissionRefused("RESOURCE_EXHAUSTED", f"decode replica refused request {prefill.request_id!r} "
                                                         f"(fault refuse_admission)")
        self._ensure_running()
        slot = await self._admit(prefill)
        sequence = None
        try:
            # 1) Pull the KV into the slot and release the lease.
            if faults is not None and faults.delay_pull_s:
                await asyncio.sleep(faults.delay_pull_s)  # chaos: a transfer that starts late
            start = time.perf_counter()
            await self._pull_into(slot, prefill)
            pulled_s = time.perf_counter() - start
            # 2) Join the running batch.
            generator = torch.Generator()
            generator.set_state(torch.from_numpy(np.frombuffer(prefill.rng_state, dtype=np.uint8).copy()))
            sequence = _Sequence(prefill.request_id, slot, sampling, generator, prefill.first_token, 1, faults=faults)
            self._num_faulty += faults is not None
            self._active.append(sequence)
            self._work.set()
            first = True
            # 3) Stream what the loop produces.
            while True:
                chunk = self._coalesce(await sequence.out.get(), sequence.out)
                if isinstance(chunk, Exception):
                    raise chunk
                if first:
                    chunk = TokenChunk(chunk.token_ids, chunk.finish_reason, kv_transfer_s=pulled_s)
                    first = False
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            if sequence is not None:
                sequence.cancelled = True  # the loop frees the slot at the step boundary
                self._work.set()
            else:
                self._free_slot(slot)

    @staticmethod
    def _coalesce(chunk: TokenChunk | Exception, queue: asyncio.Queue) -> TokenChunk | Exception:
        """Merge every chunk already waiting into one, so a slow consumer gets fewer, larger messages."""
        while isinstance(chunk, TokenChunk) and chunk.finish_reason is None and not queue.empty():
            following = queue.get_nowait()
            if isinstance(following, Exception):
                return following
            chunk = TokenChunk(chunk.token_ids + following.token_ids, following.finish_reason)
        return chunk

    def stats(self) -> dict:
        used = self.cache.num_used_slots
        return {
            "num_running": len(self._active),
            "num_waiting": self._num_waiting,
            "num_free_slots": self.cache.num_free_slots,
            "kv_cache_usage": used / self.settings.num_slots,
            "num_finished": self.num_finished,
            "num_leases_kept": self.lease_keeper.num_kept,
            "num_leases_lost_waiting": self.lease_keeper.num_lost,
            "stuck_step_s": self._stuck_step_s(),  # > 0: admits nothing; the decode router ranks it last
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

    def _stuck_step_s(self) -> float:
        """How long the running step has been running, if past max_step_s (its requests were failed); else 0."""
        running_s = self._step_running_s()
        return running_s if running_s > self.settings.max_step_s else 0.0

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._pull_threads.shutdown(wait=False, cancel_futures=True)
        self.lease_keeper.close()
        self._renew_threads.shutdown(wait=False, cancel_futures=True)

    # ---- admission and KV ----------------------------------------------------------------------------------------

    async def _admit(self, prefill: PrefillResult) -> int:
        """A KV slot for the request: at once if one is free, else after waiting for one (its lease renewed)."""
        if self.cache.num_free_slots == 0 and self._num_waiting >= self.settings.max_waiting:
            raise AdmissionRefused("RESOURCE_EXHAUSTED", f"decode replica is full ({self.settings.num_slots} "
                                                         f"running, {self._num_waiting} waiting)")
        self._num_waiting += 1
        try:
            if self._free_slots.locked():
                await self._wait_for_slot(prefill)
            else:
                await self._free_slots.acquire()  # free now: no wait
        finally:
            self._num_waiting -= 1
        return self.cache.allocate(1)[0]

    async def _wait_for_slot(self, prefill: PrefillResult) -> None:
        """Acquire a slot while the lease keeper renews the request's lease; ABORTED as soon as the lease is gone.
        Renewal stops when this returns or raises (slot granted, lease lost, caller cancelled)."""
        kept = self.lease_keeper.keep(prefill.ticket)
        acquire = asyncio.ensure_future(self._free_slots.acquire())
        granted = False
        try:
            await asyncio.wait([acquire, kept.lost], return_when=asyncio.FIRST_COMPLETED)
            if acquire.done():
                granted = True
                return
            raise kept.lost.result()
        finally:
            self.lease_keeper.stop(kept)
            if not acquire.done():
                acquire.cancel()  # asyncio.Semaphore passes on a slot granted to a cancelled waiter
            elif not granted and not acquire.cancelled():
                self._free_slots.release()  # granted just as the caller was cancelled: give it back

    async def _pull_into(self, slot: int, prefill: PrefillResult) -> None:
        loop = asyncio.get_running_loop()
        try:
            k, v = await loop.run_in_executor(self._pull_threads, self.receiver.pull, prefill.ticket, self.layout,
                                              self.settings.kv_pull_timeout_s)
        except KVTransferError as e:
            if e.code == "NOT_FOUND":  # the lease expired (or was released) before the pull reached it
                raise ServiceError("ABORTED", f"the KV of request {prefill.request_id!r} was no longer leased when "
                                              f"decode pulled it (lease expired or released): {e}") from e
            code = "DEADLINE_EXCEEDED" if e.code == "DEADLINE_EXCEEDED" else "UNAVAILABLE"
            raise ServiceError(code, f"KV pull for request {prefill.request_id!r} failed: {e}") from e
        await loop.run_in_executor(self._model_thread, self.cache.import_slot, slot, k, v)
        try:
            await loop.run_in_executor(self._pull_threads, self.receiver.release, prefill.ticket)
        except KVTransferError as e:  # the copy is safe; an unreleased lease expires on its own
            log.warning("could not release KV lease of %s: %s", prefill.request_id, e)

    def _free_slot(self, slot: int) -> None:
        """On the event loop, when no step is using the slot (between steps, or before the sequence joined)."""
        self.cache.free([slot])
        self._free_slots.release()

    # ---- the step loop -----------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._work = asyncio.Event()
            self._free_slots = asyncio.Semaphore(self.cache.num_free_slots)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="decode-steps")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_finished()
            if not self._active:
                self._work.clear()
                await self._work.wait()
                continue
            batch = list(self._active)
            stall_s = self._stall_s(batch) if self._num_faulty else 0.0
            self._step_started_at = time.monotonic()
            step = loop.run_in_executor(self._model_thread, self._timed_step, batch, stall_s)
            try:
                tokens = await asyncio.wait_for(asyncio.shield(step), self.settings.max_step_s)
            except TimeoutError:  # fail the clients now; the slots stay taken until the model thread lets go
                log.error("decode step of %d sequences ran past %g s", len(batch), self.settings.max_step_s)
                self._fail(batch, "DEADLINE_EXCEEDED", f"the decode step ran past decode.max_step_s = "
                                                       f"{self.settings.max_step_s:g} s")
                await asyncio.wait([step])
                continue
            except Exception as e:  # a failed step fails its sequences, never the worker
                log.exception("decode step of %d sequences failed", len(batch))
                self._fail(batch, "INTERNAL", f"decode step failed: {e}")
                continue
            finally:
                self._step_started_at = None
            for sequence, token in zip(batch, tokens):
                if sequence.cancelled:
                    continue
                sequence.num_generated += 1
                sequence.last_token = token
                finish = ("stop" if token in self.eos_token_ids
                          else "length" if sequence.num_generated >= sequence.sampling.max_new_tokens else None)
                sequence.out.put_nowait(TokenChunk([token], finish))
                if finish is not None:
                    sequence.cancelled = True
                    self.num_finished += 1
            self._drop_finished()

    @staticmethod
    def _fail(batch: list[_Sequence], code: str, message: str) -> None:
        for sequence in batch:
            if not sequence.cancelled:
                sequence.out.put_nowait(ServiceError(code, f"{message} (request {sequence.request_id!r})"))
            sequence.cancelled = True

    def _drop_finished(self) -> None:
        """Sequences leave between steps: finished or abandoned ones give their slot back."""
        for sequence in [s for s in self._active if s.cancelled]:
            self._active.remove(sequence)
            self._num_faulty -= sequence.faults is not None
            self._free_slot(sequence.slot)

    @staticmethod
    def _stall_s(batch: list[_Sequence]) -> float:
        """Chaos: how long this step must stall for the sequences with a fault plan."""
        return max((s.faults.stall_for(s.num_generated) for s in batch if s.faults is not None), default=0.0)

    def _timed_step(self, batch: list[_Sequence], stall_s: float) -> list[int]:
        if stall_s:
            time.sleep(stall_s)  # chaos: a step that stalls, holding the model thread
        return self._step(batch)

    def _step(self, batch: list[_Sequence]) -> list[int]:
        """On the model thread: one forward for every active sequence, one token each."""
        if self._graphs is not None:
            logits = self._graphs.step([s.slot for s in batch], [s.last_token for s in batch])  # [B, V]
        else:
            input_ids = torch.tensor([[s.last_token] for s in batch], device=self.runner.device)  # [B, 1]
            logits = self.runner.forward(self.cache, [s.slot for s in batch], input_ids)  # [B, V]
        return sample(logits, [s.sampling for s in batch], [s.generator for s in batch])

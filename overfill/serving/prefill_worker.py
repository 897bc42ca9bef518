"""The prefill pool's engine: batch queued prompts up to a token budget, run the full model, sample the first token
and lease each request's KV to the decode pool. No Ray here; `services/prefill` wraps it.

Requests wait in a queue bounded in requests and in prompt tokens, and the KV the replica holds or will hold
(queued, running and leased prompts) has a token budget; over any bound: RESOURCE_EXHAUSTED at once, so a burst never
grows memory or waiting time without bound. One background task forms batches:
up to `max_batch_tokens` prompt tokens and `max_batch_size` prompts, always at least one prompt. The model runs on a
single worker thread so the event loop keeps accepting requests (and the KV service keeps serving pulls) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import sample
from overfill.serving.types import PrefillRequest, PrefillResult, ServiceError
from overfill.transport.base import KVSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillSettings:
    max_seq_len: int = 2048          # the most prompt + generated tokens one request may use
    max_batch_tokens: int = 4096     # prompt tokens per prefill batch
    max_batch_size: int = 16         # prompts per prefill batch (KV slots of the staging cache)
    max_queued_requests: int = 256   # waiting requests; more are refused with RESOURCE_EXHAUSTED
    max_queued_tokens: int = 32768   # prompt tokens waiting; more are refused with RESOURCE_EXHAUSTED
    max_leased_tokens: int = 65536   # prompt tokens queued + running + leased (this replica's KV); likewise


@dataclass
class _Pending:
    request: PrefillRequest
    future: asyncio.Future
    enqueued_at: float


class PrefillWorker:
    def __init__(self, runner: ModelRunner, sender: KVSender, eos_token_ids: set[int], settings: PrefillSettings):
        self.runner, self.sender, self.eos_token_ids, self.settings = runner, sender, set(eos_token_ids), settings
        self.cache = KVCache(CacheSpec.for_geometry(runner.geometry, settings.max_batch_size, settings.max_seq_len,
                                                    runner.dtype, runner.device))
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefill-model")
        self.num_running = 0
        self._running_tokens = 0
        self.num_prefilled = 0

    # ---- public ------------------------------------------------------------------------------------------------

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        """Queue one prompt and wait for its ticket. Cancelling the caller drops it from the queue or frees its KV."""
        if len(request.prompt_ids) + 1 > self.settings.max_seq_len:
            raise ServiceError("RESOURCE_EXHAUSTED", f"prompt has {len(request.prompt_ids)} tokens; the context holds "
                                                     f"{self.settings.max_seq_len} with the generated ones")
        if len(self._queue) >= self.settings.max_queued_requests:
            raise ServiceError("RESOURCE_EXHAUSTED", f"prefill queue is full ({self.settings.max_queued_requests} "
                                                     "requests waiting)")
        num_tokens, queued = len(request.prompt_ids), self._queued_tokens()
        if queued + num_tokens > self.settings.max_queued_tokens:
            raise ServiceError("RESOURCE_EXHAUSTED", f"prefill queue is full ({queued} prompt tokens waiting, "
                                                     f"{num_tokens} more exceed {self.settings.max_queued_tokens})")
        held = queued + self._running_tokens + self.sender.leases.num_tokens
        if held + num_tokens > self.settings.max_leased_tokens:
            raise ServiceError("RESOURCE_EXHAUSTED", f"prefill KV budget is spent ({held} prompt tokens queued, "
                                                     f"running or leased, {num_tokens} more exceed "
                                                     f"{self.settings.max_leased_tokens})")
        self._ensure_running()
        pending = _Pending(request, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.append(pending)
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending in self._queue:
                self._queue.remove(pending)
            elif pending.future.done() and not pending.future.cancelled() and pending.future.exception() is None:
                self._release(pending.future.result())
            raise

    def stats(self) -> dict:
        return {
            "queued_prompt_tokens": self._queued_tokens(),
            "leased_tokens": self.sender.leases.num_tokens,
            "num_waiting": len(self._queue),
            "num_running": self.num_running,
            "num_leases": self.sender.num_leases,
            "num_prefilled": self.num_prefilled,
        }

    def _queued_tokens(self) -> int:
        return sum(len(p.request.prompt_ids) for p in self._queue)

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
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._next_batch()
            if not batch:
                continue
            self.num_running = len(batch)
            self._running_tokens = sum(len(p.request.prompt_ids) for p in batch)
            try:
                results = await loop.run_in_executor(self._executor, self._prefill_batch, [p.request for p in batch])
            except Exception as e:  # a failed batch fails its requests, never the worker
                log.exception("prefill batch of %d failed", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(ServiceError("INTERNAL", f"prefill failed: {e}"))
                continue
            finally:
                self.num_running = self._running_tokens = 0
            for pending, result in zip(batch, results):
                if isinstance(result, ServiceError):
                    if not pending.future.done():
                        pending.future.set_exception(result)
                elif pending.future.done():  # the caller went away while its prompt was running: free its KV now
                    self._release(result)
                else:
                    pending.future.set_result(result)
                    self.num_prefilled += 1

    def _next_batch(self) -> list[_Pending]:
        batch, tokens = [], 0
        while self._queue and len(batch) < self.settings.max_batch_size:
            size = len(self._queue[0].request.prompt_ids)
            if batch and tokens + size > self.settings.max_batch_tokens:
                break
            pending = self._queue.popleft()
            if not pending.future.done():
                batch.append(pending)
                tokens += size
        return batch

    def _prefill_batch(self, requests: list[PrefillRequest]) -> list[PrefillResult | ServiceError]:
        """On the model thread: one right-padded forward, first tokens sampled, each sequence's KV leased."""
        start = time.perf_counter()
        lengths = [len(r.prompt_ids) for r in requests]
        input_ids = torch.zeros(len(requests), max(lengths), dtype=torch.long)  # [B, T], right padded
        for row, r in enumerate(requests):
            input_ids[row, :lengths[row]] = torch.tensor(r.prompt_ids)
        generators = [r.sampling.make_generator() for r in requests]
        slots = self.cache.allocate(len(requests))
        try:
            logits = self.runner.forward(self.cache, slots, input_ids.to(self.runner.device), num_new=lengths)
            tokens = sample(logits, [r.sampling for r in requests], generators)
            results = []
            for row, (request, token) in enumerate(zip(requests, tokens)):
                finish = "stop" if token in self.eos_token_ids else "length" if request.sampling.max_new_tokens == 1 else None
                ticket = None
                if finish is None:
                    k, v = self.cache.export_slot(slots[row])  # [L, H, T, D] copies, owned by the lease
                    try:
                        ticket = self.sender.publish(request.request_id, k, v)
                    except KeyError:
                        results.append(ServiceError("INVALID_ARGUMENT", f"request_id {request.request_id!r} is "
                                                                        "already in flight"))
                        continue
                results.append(PrefillResult(
                    request_id=request.request_id, ticket=ticket, first_token=token, prompt_tokens=lengths[row],
                    finish_reason=finish, rng_state=generators[row].get_state().numpy().tobytes(),
                    prefill_s=time.perf_counter() - start,
                ))
            return results
        finally:
            self.cache.free(slots)

    def _release(self, result: PrefillResult) -> None:
        if result.ticket is not None:
            self.sender.release(result.request_id)

"""Two-stage generation in process: prefill with one model, decode with another, on one KV cache.

Modes:
    overfill  the full model prefills and samples the first token; the decoder continues on the full model's KV
    full      the full model does both stages (the quality reference)
    pruned    the decoder does both stages (the baseline OverFill must beat)

The loop is the service's, in one process: a `Scheduler` plans each step and `step.run` executes it (the prefill
rows on the prefill model, the decode rows on the decode model, one sample for all).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from overfill.engine.kv_cache import CacheFullError, CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling_params import SamplingParams
from overfill.engine.scheduler import Request, Scheduler, SchedulerConfig, State
from overfill.engine.step import ModelStep, right_pad, run
from overfill.geometry import check_same_geometry
from overfill.status import FinishReason, StatusCode


class Mode(str, Enum):
    OVERFILL = "overfill"
    FULL = "full"
    PRUNED = "pruned"


@dataclass
class GenerationOutput:
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: FinishReason | None  # STOP (an EOS token, included in token_ids, or the callback said stop) or
    #                                     LENGTH; None when the row failed (`status`)
    ttft_s: float        # request start -> first token sampled
    tpot_s: float | None  # (last token time - first token time) / (tokens - 1); None for a single token
    status: StatusCode | None = None  # INTERNAL when the model's logits for this row were not finite
    message: str = ""


# (row, token_id), called as each token is sampled; returning True ends that row there (finish_reason STOP),
# e.g. when its text reached a stop string.
TokenCallback = Callable[[int, int], bool | None]


class TwoStageEngine:
    """Holds the full model and/or the decoder and runs batched generation in any mode they allow."""

    def __init__(self, full: ModelRunner | None, decoder: ModelRunner | None, eos_token_ids: set[int],
                 cuda_graphs: bool = False):
        """`cuda_graphs`: on CUDA, decode steps replay CUDA graphs (engine/cuda_graphs.py), captured per cache on
        first use (pass the same `cache` to `generate` to reuse them); ignored elsewhere."""
        if full is None and decoder is None:
            raise ValueError("the engine needs a full model, a decoder, or both")
        if full is not None and decoder is not None:
            check_same_geometry(full.geometry, decoder.geometry)
        self.full, self.decoder = full, decoder
        self.eos_token_ids = set(eos_token_ids)
        reference = full or decoder
        self.geometry, self.dtype, self.device = reference.geometry, reference.dtype, reference.device
        self.cuda_graphs = cuda_graphs and torch.device(self.device).type == "cuda"
        self._decode_steps: dict[int, ModelStep] = {}  # id(decode runner) -> its step over the last cache used

    def runners(self, mode: Mode | str) -> tuple[ModelRunner, ModelRunner]:
        """(prefill runner, decode runner) for a mode, or a ValueError naming what is missing."""
        mode = Mode(mode)
        need = {Mode.OVERFILL: ("full", "decoder"), Mode.FULL: ("full",), Mode.PRUNED: ("decoder",)}[mode]
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"mode {mode.value!r} needs the {' and the '.join(missing)} model, which is not loaded")
        prefill = self.decoder if mode is Mode.PRUNED else self.full
        decode = self.full if mode is Mode.FULL else self.decoder
        return prefill, decode

    def new_cache(self, num_slots: int, max_seq_len: int) -> KVCache:
        return KVCache(CacheSpec.for_geometry(self.geometry, num_slots, max_seq_len, self.dtype, self.device))

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams], mode: Mode | str,
                 on_token: TokenCallback | None = None, cache: KVCache | None = None,
                 refresh_every: int = 0) -> list[GenerationOutput]:
        """Generate for a batch of tokenized prompts; every KV slot used is freed before returning (or raising).

        `refresh_every` N > 0 (overfill mode): every N decoded tokens the full model re-reads them and its KV replaces
        the decoder's for those positions (prefill refresh, the paper's future work)."""
        prefill_runner, decode_runner = self.runners(mode)
        if refresh_every < 0 or (refresh_every and Mode(mode) is not Mode.OVERFILL):
            raise ValueError("refresh_every must be >= 0, and is only meaningful in overfill mode")
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {index} is empty")
        max_seq_len = max(len(p) + sp.max_new_tokens for p, sp in zip(prompts, params))
        cache = cache or self.new_cache(len(prompts), max_seq_len)
        if refresh_every and cache.num_free_slots < len(prompts):
            raise ValueError("refresh_every needs a KV slot free for every prompt (rows refresh in lockstep)")
        decode_step = self.model_step(decode_runner, cache)
        prefill_step = decode_step if prefill_runner is decode_runner else ModelStep(prefill_runner, cache)
        scheduler = Scheduler(SchedulerConfig(eos_token_ids=frozenset(self.eos_token_ids)), cache.pool)
        try:
            return self._generate(scheduler, prefill_step, decode_step, prompts, params, on_token, refresh_every)
        finally:
            scheduler.clear()

    def model_step(self, runner: ModelRunner, cache: KVCache) -> ModelStep:
        """The decode `ModelStep` of `runner` over `cache`, kept between calls so that its CUDA graphs are reused."""
        step = self._decode_steps.get(id(runner))
        if step is None or step.cache is not cache:
            step = self._decode_steps[id(runner)] = ModelStep(runner, cache, self.cuda_graphs)
        return step

    def _generate(self, scheduler: Scheduler, prefill_step: ModelStep, decode_step: ModelStep,
                  prompts: list[list[int]], params: list[SamplingParams], on_token: TokenCallback | None,
                  refresh_every: int) -> list[GenerationOutput]:
        start = time.perf_counter()
        num_rows = len(prompts)
        for row, (prompt, p) in enumerate(zip(prompts, params)):
            scheduler.add(Request.to_prefill(str(row), prompt, p, p.resolved_seed()))
        outputs: list[list[int]] = [[] for _ in prompts]
        finish: list[FinishReason | None] = [None] * num_rows
        failure: list[tuple[StatusCode, str] | None] = [None] * num_rows
        first_time, last_time = [0.0] * num_rows, [0.0] * num_rows
        slots: dict[int, int] = {}
        num_decode_steps = 0

        while True:
            # 1) Plan: the first step prefills every prompt (one right-padded batch, when the cache has the slots);
            #    each later step decodes one token of every row still running.
            plan = scheduler.schedule()
            if not plan.rows:
                if scheduler.has_requests:
                    raise CacheFullError(f"no free KV slot for {scheduler.num_waiting} waiting prompt(s)")
                break
            slots.update((int(r.request_id), r.slot) for r in plan.prefill)
            # 2) Run it and sample; the callback may end a row at its token (a stop string).
            sampled = run(plan, prefill_step, decode_step).tokens
            now = time.perf_counter()
            stopped = set()
            if on_token is not None:
                stopped = {r.request_id for r, token in zip(plan.rows, sampled)
                           if token is not None and on_token(int(r.request_id), token)}
            # 3) Account for the tokens: finish reasons, failures.
            for event in scheduler.update(plan, sampled, stopped):
                row = int(event.request_id)
                if event.status is not None:
                    failure[row] = (event.status, event.message)
                    continue
                if not outputs[row]:
                    first_time[row] = now
                outputs[row].append(event.token_id)
                last_time[row] = now
                finish[row] = event.finish_reason
            if plan.decode:
                num_decode_steps += 1
                running = [row for row in range(num_rows) if scheduler.state_of(str(row)) is State.RUNNING]
                if refresh_every and running and num_decode_steps % refresh_every == 0:
                    self._refresh(decode_step.cache, [slots[row] for row in running],
                                  [outputs[row] for row in running], refresh_every)

        return [
            GenerationOutput(
                token_ids=outputs[row],
                prompt_tokens=len(prompts[row]),
                finish_reason=finish[row],
                ttft_s=first_time[row] - start if outputs[row] else time.perf_counter() - start,
                tpot_s=(last_time[row] - first_time[row]) / (len(outputs[row]) - 1) if len(outputs[row]) > 1 else None,
                status=failure[row][0] if failure[row] else None,
                message=failure[row][1] if failure[row] else "",
            )
            for row in range(num_rows)
        ]

    def _refresh(self, cache: KVCache, slots: list[int], outputs: list[list[int]], num: int) -> None:
        """The full model rewrites the KV of the last `num` tokens in the cache (all rows decoded in lockstep, so each
        has the same `num` decoder-written positions at its end; the newest token is not in the cache yet)."""
        tokens, _ = right_pad([out[-num - 1:-1] for out in outputs], self.device)  # [A, num]
        for slot in slots:
            cache.lengths[slot] -= num
        self.full.forward(cache, slots, tokens)

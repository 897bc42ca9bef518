"""Two-stage generation in process: prefill with one model, decode with another, on one KV cache.

Modes (DESIGN §2):
    overfill  the full model prefills and samples the first token; the decoder continues on the full model's KV
    full      the full model does both stages (the quality reference)
    pruned    the decoder does both stages (the baseline OverFill must beat)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from overfill.engine.cuda_graphs import GraphDecoder
from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams, sample
from overfill.geometry import check_same_geometry


class Mode(str, Enum):
    OVERFILL = "overfill"
    FULL = "full"
    PRUNED = "pruned"


@dataclass
class GenerationOutput:
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str   # "stop" (an EOS token, included in token_ids, or the callback said stop) or "length"
    ttft_s: float        # request start -> first token sampled
    tpot_s: float | None  # (last token time - first token time) / (tokens - 1); None for a single token


# (row, token_id), called as each token is sampled; returning True ends that row there (finish_reason "stop"),
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
        self._graphs: dict[int, GraphDecoder] = {}  # id(decode runner) -> its graphs over the last cache used

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
        slots = cache.allocate(len(prompts))
        try:
            return self._generate(prefill_runner, decode_runner, cache, slots, prompts, params, on_token, refresh_every)
        finally:
            cache.free(slots)

    def _generate(self, prefill_runner: ModelRunner, decode_runner: ModelRunner, cache: KVCache, slots: list[int],
                  prompts: list[list[int]], params: list[SamplingParams],
                  on_token: TokenCallback | None, refresh_every: int) -> list[GenerationOutput]:
        start = time.perf_counter()
        generators = [p.make_generator(self.device) for p in params]
        outputs: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        last_time = [0.0] * len(prompts)

        def accept(row: int, token: int) -> None:
            outputs[row].append(token)
            last_time[row] = time.perf_counter()
            stop_here = on_token(row, token) if on_token is not None else False
            if token in self.eos_token_ids or stop_here:
                finish[row] = "stop"
            elif len(outputs[row]) >= params[row].max_new_tokens:
                finish[row] = "length"

        # 1) Prefill every prompt in one right-padded batch and sample the first tokens.
        lengths = [len(p) for p in prompts]
        input_ids = torch.zeros(len(prompts), max(lengths), dtype=torch.long)  # [B, T], padding id 0 never attended
        for row, prompt in enumerate(prompts):
            input_ids[row, :len(prompt)] = torch.tensor(prompt)
        logits = prefill_runner.forward(cache, slots, input_ids.to(self.device), num_new=lengths)  # [B, V]
        for row, token in enumerate(sample(logits, params, generators)):
            accept(row, token)
        first_time = list(last_time)

        # 2) Decode the rows still running, one token each per step, until EOS or max_new_tokens.
        active = [row for row in range(len(prompts)) if finish[row] is None]
        num_steps = 0
        while active:
            logits = self._decode_step(decode_runner, cache, [slots[row] for row in active],
                                       [outputs[row][-1] for row in active])  # [A, V]
            tokens = sample(logits, [params[row] for row in active], [generators[row] for row in active])
            for row, token in zip(active, tokens):
                accept(row, token)
            active = [row for row in active if finish[row] is None]
            num_steps += 1
            if refresh_every and active and num_steps % refresh_every == 0:
                self._refresh(cache, [slots[row] for row in active], [outputs[row] for row in active], refresh_every)

        return [
            GenerationOutput(
                token_ids=outputs[row],
                prompt_tokens=lengths[row],
                finish_reason=finish[row],
                ttft_s=first_time[row] - start,
                tpot_s=(last_time[row] - first_time[row]) / (len(outputs[row]) - 1) if len(outputs[row]) > 1 else None,
            )
            for row in range(len(prompts))
        ]

    def _decode_step(self, runner: ModelRunner, cache: KVCache, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """One token per row: a CUDA-graph replay when enabled, else the eager forward. Returns logits [A, V]."""
        if not self.cuda_graphs:
            step_ids = torch.tensor([[token] for token in tokens], device=self.device)  # [A, 1]
            return runner.forward(cache, slots, step_ids)
        graphs = self._graphs.get(id(runner))
        if graphs is None or graphs.cache is not cache:
            graphs = self._graphs[id(runner)] = GraphDecoder(runner, cache)
        return graphs.step(slots, tokens)

    def _refresh(self, cache: KVCache, slots: list[int], outputs: list[list[int]], num: int) -> None:
        """The full model rewrites the KV of the last `num` tokens in the cache (all rows decoded in lockstep, so each
        has the same `num` decoder-written positions at its end; the newest token is not in the cache yet)."""
        tokens = torch.tensor([out[-num - 1:-1] for out in outputs], device=self.device)  # [A, num]
        for slot in slots:
            cache.lengths[slot] -= num
        self.full.forward(cache, slots, tokens)

"""Decode steps replayed from CUDA graphs: one static-shape step per (batch bucket, KV-length bucket), captured once.

On a GPU an eager decode step of a small model is mostly kernel launches (a dozen per layer), not math; a captured
graph replays them all with one launch. A graph fixes every shape and address, so the step is written with static
shapes (the rest of the engine keeps its dynamic `ModelRunner.forward`):

    rows    the active sequences, padded up to a batch bucket (1, 2, 4, 8, 16, 32 by default, at most the cache's slots)
    keys    the first K positions of each row's slot, K a KV-length bucket (powers of two from 128, capped at
            max_seq_len) covering the longest row; a mask hides each row's positions from its length on

Static buffers of one graph, written before each replay (B = batch bucket, K = KV bucket, V = vocabulary):
    input_ids   [B, 1]   int64    each row's last token
    slot_index  [B]      int64    each row's KV slot
    positions   [B]      int64    where each row's new K/V goes (its length so far) and its RoPE position
    ends        [B]      int64    positions + 1: the keys [0, end) a row attends to
    logits      [B, V]   float32  output, at each row's new token
Padding rows copy a real row's slot but write at position max_seq_len - 1, which is beyond that sequence's length:
attention never reads a position before its own sequence has written it there, so the stray write is never seen.
They attend to key 0 only and their logits are dropped. A step that fits no bucket (more rows than the largest
bucket, or every row at the last position) runs eagerly.

`GraphDecoder(..., capture=False)` runs the very same static step without graphs: on CPU, and as the reference the
tests compare with `ModelRunner.forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from overfill.engine.kv_cache import KVCache
from overfill.engine.runner import ModelRunner

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
MIN_KV_BUCKET = 128


def bucket_for(size: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket holding `size`, or None when none does."""
    return next((b for b in sorted(buckets) if b >= size), None)


def batch_buckets(num_slots: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> tuple[int, ...]:
    """The batch buckets a cache of `num_slots` slots can use: the given ones below num_slots, then num_slots."""
    return tuple(sorted({b for b in buckets if b < num_slots} | {min(num_slots, max(buckets))}))


def kv_buckets(max_seq_len: int, smallest: int = MIN_KV_BUCKET) -> tuple[int, ...]:
    """Powers of two from `smallest` (or max_seq_len if smaller) up to max_seq_len, which is always the last."""
    sizes, size = [], smallest
    while size < max_seq_len:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (max_seq_len,)


@dataclass(frozen=True)
class PaddedStep:
    """One decode step laid out for a graph: every list has `batch` entries, the first `num_rows` real."""

    batch: int
    kv_len: int
    num_rows: int
    input_ids: list[int]
    slots: list[int]
    positions: list[int]
    ends: list[int]


def plan_step(tokens: list[int], slots: list[int], lengths: list[int], max_seq_len: int,
              batch_sizes: tuple[int, ...], kv_sizes: tuple[int, ...]) -> PaddedStep | None:
    """Pad a decode step (row r: last token tokens[r], slot slots[r] holding lengths[r] positions) to its buckets;
    None when it fits none (then the step runs eagerly)."""
    if any(length >= max_seq_len for length in lengths):
        raise ValueError(f"a sequence is full: lengths {lengths}, max_seq_len {max_seq_len}")
    num_rows = len(tokens)
    batch = bucket_for(num_rows, batch_sizes)
    kv_len = bucket_for(max(lengths) + 1, kv_sizes)
    if batch is None or kv_len is None or num_rows == 0:
        return None
    positions, ends = list(lengths), [length + 1 for length in lengths]
    if batch > num_rows:
        # Padding writes at the last position of a slot whose own sequence has not reached it.
        donor = next((row for row in range(num_rows) if lengths[row] < max_seq_len - 1), None)
        if donor is None:
            return None
        pad = batch - num_rows
        tokens = tokens + [tokens[donor]] * pad
        slots = slots + [slots[donor]] * pad
        positions = positions + [max_seq_len - 1] * pad
        ends = ends + [1] * pad
    return PaddedStep(batch, kv_len, num_rows, list(tokens), list(slots), positions, ends)


class _StaticStep:
    """The buffers of one (batch, kv_len) step and, once captured, its graph. Shapes: see the module docstring."""

    def __init__(self, batch: int, kv_len: int, vocab_size: int, device: torch.device, max_seq_len: int):
        self.batch, self.kv_len = batch, kv_len
        self.input_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)                   # [B, 1]
        self.slot_index = torch.zeros(batch, dtype=torch.long, device=device)                     # [B]
        self.positions = torch.full((batch,), max_seq_len - 1, dtype=torch.long, device=device)  # [B]
        self.ends = torch.ones(batch, dtype=torch.long, device=device)                            # [B]
        self.logits = torch.zeros(batch, vocab_size, dtype=torch.float32, device=device)          # [B, V]
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, plan: PaddedStep) -> None:
        """Copy a plan into the buffers (one host-to-device copy of all four)."""
        rows = torch.tensor([plan.input_ids, plan.slots, plan.positions, plan.ends], dtype=torch.long)  # [4, B]
        rows = rows.to(self.slot_index.device, non_blocking=True)
        self.input_ids.copy_(rows[0, :, None])
        self.slot_index.copy_(rows[1])
        self.positions.copy_(rows[2])
        self.ends.copy_(rows[3])


class GraphDecoder:
    """Decode steps over one `KVCache` with static shapes: captured as CUDA graphs (`capture=True`, CUDA only) or run
    eagerly. Not thread-safe; one per (runner, cache), used by the cache's owner."""

    def __init__(self, runner: ModelRunner, cache: KVCache, batch_sizes: tuple[int, ...] = BATCH_BUCKETS,
                 capture: bool = True):
        device = torch.device(cache.spec.device)
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA cache, not {device}; use capture=False")
        self.runner, self.cache, self.capture = runner, cache, capture
        self.device = device
        self.max_seq_len = cache.spec.max_seq_len
        self.batch_sizes = batch_buckets(cache.spec.num_slots, batch_sizes)
        self.kv_sizes = kv_buckets(self.max_seq_len)
        # Tables and key positions the graphs read: created once here, never reallocated (graphs hold addresses).
        self._cos, self._sin = (t[:self.max_seq_len].clone() for t in runner._rope_tables(self.max_seq_len))
        self._key_positions = torch.arange(self.max_seq_len, device=device)  # [T]
        self._steps: dict[tuple[int, int], _StaticStep] = {}
        self._pool = None
        self.num_graph_steps = self.num_eager_steps = 0

    def step(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """One decode step for rows (slots[r], last token tokens[r]): appends their K/V and returns logits [A, V]
        (float32), as `runner.forward(cache, slots, tokens as [A, 1])` does."""
        lengths = [self.cache.reserve(slot, 1) for slot in slots]
        plan = plan_step(tokens, slots, lengths, self.max_seq_len, self.batch_sizes, self.kv_sizes)
        if plan is None:
            self.num_eager_steps += 1
            return self.runner.forward(self.cache, slots, torch.tensor([[t] for t in tokens], device=self.device))
        static = self._static(plan.batch, plan.kv_len)
        static.load(plan)
        if static.graph is not None:
            static.graph.replay()
        else:
            self._run(static)
        self.cache.advance(slots, [1] * len(slots))
        self.num_graph_steps += 1
        return static.logits[:plan.num_rows].clone()  # [A, V]; the buffer is overwritten by the next step

    def capture_all(self) -> None:
        """Capture every bucket now (largest first, so smaller graphs reuse its memory), instead of on first use."""
        for batch in sorted(self.batch_sizes, reverse=True):
            for kv_len in sorted(self.kv_sizes, reverse=True):
                self._static(batch, kv_len)

    # ---- the static step ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _run(self, static: _StaticStep) -> None:
        """The decode step on the buffers: only static shapes and device-side indexing, so it can be captured."""
        runner, cache, kv_len = self.runner, self.cache, static.kv_len
        cos = self._cos[static.positions][:, None, None]  # [B, 1, 1, hd]
        sin = self._sin[static.positions][:, None, None]  # [B, 1, 1, hd]
        keys = self._key_positions[:kv_len]  # [K]
        mask = keys[None, :] < static.ends[:, None]  # [B, K]
        if runner.sliding_window is not None:
            mask = mask & (keys[None, :] > static.positions[:, None] - runner.sliding_window)
        mask = mask[:, None, None, :]  # [B, 1, 1, K]
        x = runner.embed[static.input_ids]  # [B, 1, D]
        for index, w in enumerate(runner.layers):
            def store_and_read(k: torch.Tensor, v: torch.Tensor, index: int = index):
                cache.write_decode(index, static.slot_index, static.positions, k, v)  # k, v: [B, Hkv, 1, hd]
                # cache.k[index, :, :, :K]: [S, Hkv, K, hd] -> the rows' slots: [B, Hkv, K, hd]
                return (cache.k[index, :, :, :kv_len].index_select(0, static.slot_index),
                        cache.v[index, :, :, :kv_len].index_select(0, static.slot_index))

            x = runner.layer(w, x, cos, sin, mask, store_and_read)
        static.logits.copy_(runner.lm_head(runner._rms_norm(x[:, 0], runner.final_norm)).float())  # [B, V]

    def _static(self, batch: int, kv_len: int) -> _StaticStep:
        static = self._steps.get((batch, kv_len))
        if static is None:
            static = _StaticStep(batch, kv_len, self.runner.embed.shape[0], self.device, self.max_seq_len)
            if self.capture:
                self._capture(static)
            self._steps[(batch, kv_len)] = static
        return static

    def _capture(self, static: _StaticStep) -> None:
        """Warm up on a side stream (as CUDA graph capture requires), then capture. The buffers point at position
        max_seq_len - 1 of slot 0, so the warm-up's writes land where no sequence reads before writing."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        static.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(static.graph, pool=self._pool, capture_error_mode="thread_local"):
            self._run(static)

"""One step on a model: run a plan's rows over the KV cache, then sample each row's next token.

Every caller runs its models through here (the in-process engine, the prefill and decode workers, lm-eval's scoring),
so right-padding token rows, the choice between CUDA graphs and eager decoding, and sampling exist once:

    right_pad(rows)              token rows -> ids [B, T] and mask [B, T] (also for training, which runs HF models)
    ModelStep(runner, cache)     one model over one cache: extend (prompts, continuations), decode (one token per row)
    run(plan, prefill, decode)   a scheduler's StepPlan: prefill rows, decode rows, one sample for all of them
                                 (and the log-probabilities of the rows that ask for them)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from overfill.engine.cuda_graphs import GraphDecoder
from overfill.engine.kv_cache import KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingBatch, logprobs_of, sample
from overfill.engine.sampling_params import TokenLogprobs
from overfill.engine.scheduler import Row, StepPlan

PAD_ID = 0  # never attended to nor scored: the mask (or each row's length) hides it


def right_pad(rows: Sequence[Sequence[int]], device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ids [B, T] (int64, each row followed by PAD_ID) and mask [B, T] (bool, True on the row's own
    tokens), T the longest row; both built on the host and moved to `device` once."""
    if not rows:
        raise ValueError("right_pad needs at least one row")
    lengths = [len(row) for row in rows]
    width = max(lengths)
    ids = torch.tensor([list(row) + [PAD_ID] * (width - len(row)) for row in rows], dtype=torch.long)  # [B, T]
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
    return ids.to(device), mask.to(device)


class ModelStep:
    """One model's work over one KV cache. Decode steps replay CUDA graphs when `cuda_graphs` is asked and the cache
    is on CUDA, and run eagerly otherwise: chosen here, once (graphs are captured per cache on first use)."""

    def __init__(self, runner: ModelRunner, cache: KVCache, cuda_graphs: bool = False):
        self.runner, self.cache = runner, cache
        on_cuda = torch.device(cache.spec.device).type == "cuda"
        self.graphs = GraphDecoder(runner, cache) if cuda_graphs and on_cuda else None

    def extend(self, slots: list[int], pieces: Sequence[Sequence[int]], all_logits: bool = False) -> torch.Tensor:
        """Run each row's tokens after the KV its slot holds (a prompt into an empty slot, or a continuation) and
        append their K/V. Returns float32 logits at each row's last token, [B, V], or at every position, [B, T, V]."""
        ids, _ = right_pad(pieces, self.runner.device)  # [B, T]
        return self.runner.forward(self.cache, slots, ids, num_new=[len(p) for p in pieces], all_logits=all_logits)

    def decode(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """One token per row (its last one) after its slot's KV. Returns float32 logits [B, V]."""
        if self.graphs is not None:
            return self.graphs.step(slots, tokens)
        ids = torch.tensor(tokens, device=self.runner.device)[:, None]  # [B, 1]
        return self.runner.forward(self.cache, slots, ids)


@dataclass(frozen=True)
class StepOutput:
    """One entry per row of the plan (`plan.rows`, in order)."""

    tokens: list[int | None]              # None where the row's logits were not finite
    logprobs: list[TokenLogprobs | None]  # None where the row's request asked for none


def run(plan: StepPlan, prefill: ModelStep | None, decode: ModelStep | None) -> StepOutput:
    """Run a plan: its prefill rows on `prefill`, its decode rows on `decode` (both over the same cache slots the plan
    names), then sample every row together."""
    logits = []  # [rows, V] each
    if plan.prefill:
        logits.append(prefill.extend([r.slot for r in plan.prefill], [r.token_ids for r in plan.prefill]))
    if plan.decode:
        logits.append(decode.decode([r.slot for r in plan.decode], [r.token_ids[-1] for r in plan.decode]))
    if not logits:
        return StepOutput([], [])
    return sample_rows(logits[0] if len(logits) == 1 else torch.cat(logits), plan.rows)


def sample_rows(logits: torch.Tensor, rows: Sequence[Row]) -> StepOutput:
    """logits [B, V] of the plan rows `rows` -> their tokens (one host transfer; see sampling.py), and the
    log-probabilities of the rows that ask for them (one more, only then)."""
    params = [r.sampling for r in rows]
    tokens = sample(logits, SamplingBatch(params, [r.seed for r in rows], [r.index for r in rows]))
    return StepOutput(tokens, logprobs_of(logits, tokens, params))

"""Batched sampling: the distributions it draws from (temperature, exact top-k and top-p), seeded rows that do not
depend on their batch, rounds or device, non-finite rows failing alone, and parameter errors naming the field."""

import collections
import dataclasses
import math

import pytest
import torch

from overfill.engine import sampling, sampling_params
from overfill.engine.sampling import SamplingBatch, SamplingParams, sample
from overfill.engine.sampling_params import uniform

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def reference(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The distribution a row must be sampled from, by sorting: [V]."""
    probs = torch.softmax(logits.double() / p.temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = torch.ones_like(ordered, dtype=torch.bool)
    if 0 < p.top_k < len(probs):
        keep[p.top_k:] = False
    kept = torch.where(keep, ordered, 0.0)
    kept = kept / kept.sum()
    keep &= (kept.cumsum(0) - kept) < p.top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = ordered[keep]
    return out / out.sum()


def frequencies(logits: torch.Tensor, p: SamplingParams, num_draws: int, batch: int = 100) -> torch.Tensor:
    """Draw `num_draws` tokens (different token indices of one seeded request, in batches of copies of the row)."""
    counts = collections.Counter()
    rows = logits[None].expand(batch, -1).contiguous()
    for start in range(0, num_draws, batch):
        counts.update(sample(rows, SamplingBatch([p] * batch, [99] * batch, list(range(start, start + batch)))))
    return torch.tensor([counts[t] / num_draws for t in range(len(logits))], dtype=torch.float64)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8),
    SamplingParams(temperature=1.0, top_p=0.6),
    SamplingParams(temperature=1.0, top_p=0.15),   # acceptance ~0.15: many rows reach the sorting fallback
    SamplingParams(temperature=0.7, top_k=4),
    SamplingParams(temperature=1.3, top_k=6, top_p=0.8),
], ids=["temperature", "top-p", "narrow-top-p", "top-k", "top-k+top-p"])
def test_draws_follow_the_exact_distribution(params):
    logits = torch.randn(12, generator=torch.Generator().manual_seed(3)) * 1.5
    expected = reference(logits, params)
    drawn = frequencies(logits, params, 6000)
    assert drawn[expected == 0].sum() == 0  # never a token outside the cut
    assert (drawn - expected).abs().max() < 0.03


def test_greedy_rows_take_the_argmax_and_a_greedy_batch_samples_nothing():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    batch = SamplingBatch([SamplingParams()] * 5, [1] * 5, [0] * 5)
    assert sample(logits, batch) == logits.argmax(-1).tolist()


@pytest.mark.parametrize("temperature", [1e-45, 1e-40, 1e-38, 1e-30])
def test_tiny_temperatures_sample_the_argmax_instead_of_failing_the_batch(temperature):
    """A float32 temperature just above 0 passes validation; dividing logits by it once made inf - inf = NaN
    probabilities and torch.multinomial failed the whole prefill or decode batch."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 20  # [B, V]
    params = [SamplingParams(temperature=temperature), SamplingParams(), SamplingParams(temperature=0.7, top_p=1e-45)]
    assert sample(logits, SamplingBatch(params, [0, 1, 2], [0, 0, 0])) == logits.argmax(-1).tolist()


def test_ordinary_temperatures_still_sample_their_distribution():
    logits = torch.tensor([0.0, math.log(3.0)])  # p = [0.25, 0.75] at temperature 1
    draws = frequencies(logits, SamplingParams(temperature=1.0), 4000)
    assert abs(draws[1] - 0.75) < 0.03


MIXED = [SamplingParams(), SamplingParams(temperature=0.8, top_p=0.9, seed=5), SamplingParams(temperature=1.0),
         SamplingParams(temperature=0.7, top_k=20), SamplingParams(temperature=0.9, top_p=0.3),
         SamplingParams(temperature=1.2, top_k=50, top_p=0.95)]


def mixed_logits(device="cpu") -> torch.Tensor:
    return (torch.randn(len(MIXED), 500, generator=torch.Generator().manual_seed(4)) * 3).to(device)


def test_a_seeded_row_draws_the_same_tokens_alone_and_in_any_batch():
    logits, seeds = mixed_logits(), [11, 12, 13, 14, 15, 16]
    for index in range(8):
        together = sample(logits, SamplingBatch(MIXED, seeds, [index] * len(MIXED)))
        alone = [sample(logits[r:r + 1], SamplingBatch([MIXED[r]], [seeds[r]], [index]))[0] for r in range(len(MIXED))]
        reversed_batch = sample(logits.flip(0), SamplingBatch(MIXED[::-1], seeds[::-1], [index] * len(MIXED)))
        assert together == alone == reversed_batch[::-1]
    other_seed = [sample(logits[1:2], SamplingBatch([MIXED[1]], [99], [i]))[0] for i in range(8)]
    same_seed = [sample(logits[1:2], SamplingBatch([MIXED[1]], [12], [i]))[0] for i in range(8)]
    assert other_seed != same_seed


def test_how_draws_are_grouped_into_rounds_changes_no_token(monkeypatch):
    logits, seeds = mixed_logits(), list(range(6))
    expected = [sample(logits, SamplingBatch(MIXED, seeds, [i] * 6)) for i in range(20)]
    for rounds in [(16,), (4, 12), (1, 1, 1, 13)]:
        monkeypatch.setattr(sampling, "DEFAULT_ROUNDS", rounds)
        assert [sample(logits, SamplingBatch(MIXED, seeds, [i] * 6)) for i in range(20)] == expected


def test_a_row_with_non_finite_logits_fails_alone():
    logits = mixed_logits()
    expected = sample(logits, SamplingBatch(MIXED, [1] * 6, [0] * 6))
    broken = logits.clone()
    broken[1, 7] = float("nan")
    broken[3, 2] = float("inf")
    broken[4] = float("-inf")   # nothing finite
    broken[5, :10] = float("-inf")  # -inf entries alone are a ban, not a failure
    tokens = sample(broken, SamplingBatch(MIXED, [1] * 6, [0] * 6))
    assert tokens[1] is None and tokens[3] is None and tokens[4] is None
    assert tokens[0] == expected[0] and tokens[2] == expected[2] and tokens[5] is not None and tokens[5] >= 10


def test_uniforms_are_in_the_open_interval_and_differ_by_index_draw_and_seed():
    values = {uniform(seed, index, draw) for seed in (0, 2**64 - 1) for index in range(50) for draw in range(4)}
    assert len(values) == 400 and all(0 < u < 1 for u in values)


@pytest.mark.parametrize("bad, message", [
    (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
    (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"), (dict(logprobs=21), "logprobs"),
    (dict(logprobs=True), "logprobs"),
])
def test_bad_sampling_params_are_refused_by_field(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad)


@needs_cuda
def test_cuda_draws_the_same_tokens_as_the_cpu_alone_and_in_a_batch():
    seeds = [21, 22, 23, 24, 25, 26]
    cpu, cuda = mixed_logits(), mixed_logits("cuda")
    for index in range(8):
        on_cpu = sample(cpu, SamplingBatch(MIXED, seeds, [index] * 6))
        on_cuda = sample(cuda, SamplingBatch(MIXED, seeds, [index] * 6))
        alone = [sample(cuda[r:r + 1], SamplingBatch([MIXED[r]], [seeds[r]], [index]))[0] for r in range(6)]
        assert on_cuda == alone == on_cpu


def test_logprobs_are_the_models_own_for_the_rows_that_ask():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    logits[2, 7] = float("nan")
    params = [SamplingParams(temperature=0.7, seed=1, logprobs=3), SamplingParams(),
              SamplingParams(logprobs=5), SamplingParams(logprobs=0)]
    tokens = sample(logits, SamplingBatch(params, [1, 2, 3, 4], [0, 0, 0, 0]))
    out = sampling.logprobs_of(logits, tokens, params)
    expected = torch.log_softmax(logits, dim=-1)  # before temperature: the model's distribution
    assert out[1] is None and out[2] is None  # asked for none; non-finite logits (the row fails)
    first, last = out[0], out[3]
    assert first.token_id == tokens[0] and first.logprob == pytest.approx(expected[0, tokens[0]].item(), abs=1e-6)
    values, ids = expected[0].topk(3)
    assert [t for t, _ in first.top] == ids.tolist()
    assert [lp for _, lp in first.top] == pytest.approx(values.tolist(), abs=1e-6)
    assert last.token_id == tokens[3] == expected[3].argmax().item() and last.top == ()
    assert last.logprob == pytest.approx(expected[3].max().item(), abs=1e-6)


def test_a_token_of_probability_zero_gets_the_floor_not_minus_infinity():
    logits = torch.full((1, 8), -math.inf)
    logits[0, 3] = 0.0
    params = [SamplingParams(logprobs=2)]
    (entry,) = sampling.logprobs_of(logits, sample(logits, SamplingBatch(params, [0], [0])), params)
    assert entry.token_id == 3 and entry.logprob == 0.0
    assert entry.top[0] == (3, 0.0) and entry.top[1][1] == sampling_params.LOGPROB_FLOOR


@needs_cuda
def test_cuda_logprobs_equal_the_cpus():
    params = [dataclasses.replace(p, logprobs=4) for p in MIXED]
    seeds, indices = [31 + r for r in range(len(MIXED))], [0] * len(MIXED)
    cpu, cuda = mixed_logits(), mixed_logits("cuda")
    on_cpu = sampling.logprobs_of(cpu, sample(cpu, SamplingBatch(params, seeds, indices)), params)
    on_cuda = sampling.logprobs_of(cuda, sample(cuda, SamplingBatch(params, seeds, indices)), params)
    for a, b in zip(on_cpu, on_cuda):
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]

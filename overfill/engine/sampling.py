"""A step's logits to tokens, on the logits' device: greedy, temperature, top-k and top-p for every row at once.

One call per step. Rows are grouped by what they ask for, each group is computed with batched tensor ops, and the
tokens come back to the host in one transfer. Each row's randomness is its own (`sampling_params.uniform` of its
seed, token index and draw), so a seeded request gets the same token alone or in any batch, on any device.

How a row is sampled, with x = (logits - max) / temperature and p = softmax(x):
    greedy       argmax of the logits.
    temperature  inverse CDF: the first token, in vocabulary order, whose cumulative probability passes u.
    top-k        the k largest (sorted), renormalised; with top-p, the nucleus of those k; then inverse CDF.
    top-p        exact without sorting the vocabulary: draw a token from p as above and keep it when it is in the
                 nucleus, i.e. when the tokens more likely than it hold less than top_p of the mass; else draw
                 again. A draw is kept with probability >= top_p. Rows still without a token after MAX_DRAWS draws
                 sort their vocabulary and sample the nucleus directly. Taking the first draw inside the nucleus
                 samples exactly the nucleus distribution; tokens tied at its edge are all in it.
                 (A top-k cut first, sorting only rows whose nucleus reaches past it, was not enough: decoding
                 SmolLM2-135M from random prompts at temperature 0.8, a third of the nuclei of top-p 0.9 held over
                 256 tokens, and sorting a 49k vocabulary costs 1.7 ms a row on the 2-core CPU.)
A row takes the first accepted draw in draw order, so how draws are grouped into rounds (one at first on CPU, where a
draw costs a pass over the vocabulary; four at once on CUDA, where a round costs a host round trip) changes nothing.
Only a round that leaves a row without a token costs a further host transfer.

A row whose logits hold a NaN or +inf, or nothing finite, gets None: it fails its own request, not the batch.

`logprobs_of` reports the rows that ask for it (`SamplingParams.logprobs`): the chosen token's log-probability and
the most likely alternatives, in one more host transfer, only in steps where some row asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from overfill.engine.sampling_params import LOGPROB_FLOOR, SamplingParams, TokenLogprobs, uniform

__all__ = ["MAX_DRAWS", "SamplingBatch", "SamplingParams", "logprobs_of", "sample"]

MAX_DRAWS = 16                      # draws a top-p row tries before it sorts its vocabulary
ROUNDS = {"cuda": (4, 12)}          # draws per round, by device type; they add up to MAX_DRAWS
DEFAULT_ROUNDS = (1, 3, 12)
_TINY = torch.finfo(torch.float32).tiny  # the smallest temperature and top_p used: a float32 must not round to 0
_NOT_FINITE, _PENDING = -1, -2            # in the token row sent to the host: failed; no draw accepted yet


@dataclass(frozen=True)
class SamplingBatch:
    """One step's rows as the sampler sees them: each row's parameters, seed and token index (0: its first)."""

    params: list[SamplingParams]
    seeds: list[int]
    indices: list[int]

    def __post_init__(self):
        if not len(self.params) == len(self.seeds) == len(self.indices):
            raise ValueError(f"a sampling batch needs one seed and one index per row: {len(self.params)} params, "
                             f"{len(self.seeds)} seeds, {len(self.indices)} indices")


def sample(logits: torch.Tensor, batch: SamplingBatch) -> list[int | None]:
    """logits: [B, V] float32 -> one token id per row; None where the row's logits are not finite."""
    best, tokens = logits.max(dim=-1)  # [B] each; max propagates NaN
    not_finite = ~torch.isfinite(best)  # [B]: a NaN or +inf in the row, or no finite logit
    sampled = [row for row, p in enumerate(batch.params) if not p.greedy]
    draws = None
    if sampled:
        draws = _Draws(logits, best, batch, sampled)
        tokens = tokens.index_copy(0, draws.order, draws.first_round())  # [B]
    out = torch.where(not_finite, _NOT_FINITE, tokens).tolist()  # the step's one device-to-host transfer
    if draws is not None:
        pending = [row for row in sampled if out[row] == _PENDING]
        for row, token in zip(pending, draws.resolve(pending)):
            out[row] = token
    return [None if token == _NOT_FINITE else token for token in out]


def logprobs_of(logits: torch.Tensor, tokens: list[int | None], params: list[SamplingParams]
                ) -> list[TokenLogprobs | None]:
    """logits: [B, V] float32, the step's sampled `tokens` and each row's params -> per row, the chosen token's
    log-probability and its `params.logprobs` most likely alternatives; None for rows that asked for none (or whose
    logits were not finite). Log-probabilities of the model's own distribution (before temperature and cuts)."""
    out: list[TokenLogprobs | None] = [None] * len(tokens)
    rows = [b for b, (p, t) in enumerate(zip(params, tokens)) if p.logprobs is not None and t is not None]
    if not rows:
        return out
    device = logits.device
    index = torch.tensor(rows, device=device)
    logp = torch.log_softmax(logits.index_select(0, index), dim=-1)  # [R, V]
    chosen = logp.gather(1, torch.tensor([[tokens[b]] for b in rows], device=device))  # [R, 1]
    num_top = min(max(params[b].logprobs for b in rows), logits.shape[1])
    top_values, top_ids = logp.topk(num_top, dim=-1)  # [R, N] each, most likely first
    # One transfer: float64 holds every token id exactly.
    host = torch.cat([chosen.double(), top_values.double(), top_ids.double()], dim=1).tolist()  # [R, 1 + 2N]
    for b, values in zip(rows, host):
        n = params[b].logprobs
        top = tuple((int(values[1 + num_top + i]), max(values[1 + i], LOGPROB_FLOOR)) for i in range(min(n, num_top)))
        out[b] = TokenLogprobs(tokens[b], max(values[0], LOGPROB_FLOOR), top)
    return out


class _Draws:
    """The sampled (non-greedy) rows of one step, regrouped as [top-k rows | temperature-only rows | top-p rows] so
    that each group is a contiguous slice; `order` maps them back to the batch."""

    def __init__(self, logits: torch.Tensor, best: torch.Tensor, batch: SamplingBatch, sampled: list[int]):
        vocab, device = logits.shape[1], logits.device
        params = batch.params
        cut_k = [r for r in sampled if 0 < params[r].top_k < vocab]
        plain = [r for r in sampled if not 0 < params[r].top_k < vocab and params[r].top_p >= 1.0]
        nucleus = [r for r in sampled if not 0 < params[r].top_k < vocab and params[r].top_p < 1.0]
        rows = cut_k + plain + nucleus
        self.rows, self.batch, self.vocab = rows, batch, vocab
        self.num_k, self.num_plain = len(cut_k), len(plain)
        self.rounds = ROUNDS.get(device.type, DEFAULT_ROUNDS)
        first = self.rounds[0]
        # One host-to-device copy of every row's numbers: [R, 3 + first] = temperature, top_p, top_k, uniforms.
        host = torch.tensor([[max(params[r].temperature, _TINY), max(params[r].top_p, _TINY), float(params[r].top_k)]
                             + [uniform(batch.seeds[r], batch.indices[r], d) for d in range(first)] for r in rows],
                            dtype=torch.float32)
        numbers = host.to(device)
        self.order = torch.tensor(rows, device=device)  # [R]
        self.temperature, self.top_p, self.top_k = numbers[:, 0], numbers[:, 1], numbers[:, 2]
        self.uniforms = numbers[:, 3:]  # [R, first]
        picked = logits if rows == list(range(logits.shape[0])) else logits.index_select(0, self.order)  # [R, V]
        self.x = (picked - best.index_select(0, self.order)[:, None]) / self.temperature[:, None]  # [R, V], max 0

    def first_round(self) -> torch.Tensor:
        """Tokens [R] (in `order`): final for top-k and temperature rows; _PENDING for top-p rows with no draw in
        the nucleus yet."""
        k, plain = self.num_k, self.num_plain
        parts = []
        if k:
            parts.append(self._top_k(slice(0, k)))
        if len(self.rows) > k:
            self.p = torch.softmax(self.x[k:], dim=-1)  # [R - k, V]
            self.cdf = self.p.cumsum(dim=-1)            # [R - k, V]
            candidates = _inverse_cdf(self.cdf, self.uniforms[k:])  # [R - k, first]
            if plain:
                parts.append(candidates[:plain, 0])
            if len(self.rows) > k + plain:
                parts.append(self._first_in_nucleus(self.p[plain:], candidates[plain:], self.top_p[k + plain:]))
        return torch.cat(parts)

    def resolve(self, pending: list[int]) -> list[int]:
        """Tokens for the top-p rows (batch row numbers) the first round left without one: the further rounds of
        draws, then a sort of the vocabulary for rows still without one. One host transfer per round that runs."""
        position = {row: i - self.num_k for i, row in enumerate(self.rows)}  # batch row -> row of self.p
        left = [(row, position[row]) for row in pending]
        tokens: dict[int, int] = {}
        draw = self.rounds[0]
        for size in self.rounds[1:]:
            if not left:
                break
            index = torch.tensor([i for _, i in left], device=self.p.device)
            u = torch.tensor([[uniform(self.batch.seeds[row], self.batch.indices[row], d)
                               for d in range(draw, draw + size)] for row, _ in left], dtype=torch.float32)
            candidates = _inverse_cdf(self.cdf.index_select(0, index), u.to(self.p.device))  # [n, size]
            found = self._first_in_nucleus(self.p.index_select(0, index), candidates,
                                           self.top_p.index_select(0, index + self.num_k)).tolist()
            draw += size
            tokens.update((row, token) for (row, _), token in zip(left, found) if token != _PENDING)
            left = [entry for entry, token in zip(left, found) if token == _PENDING]
        if left:
            tokens.update(self._sorted_nucleus(left))
        return [tokens[row] for row in pending]

    # ---- the groups -------------------------------------------------------------------------------------------------

    def _top_k(self, rows: slice) -> torch.Tensor:
        """The top-k rows: their k largest, the nucleus of those, inverse CDF. Returns tokens [n]."""
        x, top_k, top_p, u = self.x[rows], self.top_k[rows], self.top_p[rows], self.uniforms[rows, :1]
        k_max = max(self.batch.params[r].top_k for r in self.rows[rows])
        values, ids = x.topk(k_max, dim=-1)  # [n, K], sorted descending
        in_k = torch.arange(k_max, device=x.device)[None, :] < top_k[:, None]  # [n, K]
        q = torch.where(in_k, values.exp(), 0.0)  # [n, K] unnormalised probabilities (the largest is exp(0) = 1)
        before = q.cumsum(dim=-1) - q  # [n, K] mass of the more likely ones
        q = torch.where(before < top_p[:, None] * q.sum(dim=-1, keepdim=True), q, 0.0)
        picked = _inverse_cdf(q.cumsum(dim=-1), u)  # [n, 1]
        return ids.gather(1, picked)[:, 0]

    @staticmethod
    def _first_in_nucleus(p: torch.Tensor, candidates: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
        """p: [n, V]; candidates: [n, A] drawn tokens -> [n] the first candidate inside its row's nucleus, or
        _PENDING. A token is inside when the tokens strictly more likely than it hold less than top_p."""
        chosen = p.gather(1, candidates)  # [n, A]
        above = torch.where(p[:, None, :] > chosen[:, :, None], p[:, None, :], 0.0).sum(dim=-1)  # [n, A]
        inside = above < top_p[:, None]  # [n, A]
        first = inside.int().argmax(dim=-1, keepdim=True)  # [n, 1]: the first True (argmax takes the first maximum)
        return torch.where(inside.any(dim=-1), candidates.gather(1, first)[:, 0], _PENDING)

    def _sorted_nucleus(self, left: list[tuple[int, int]]) -> dict[int, int]:
        """The exact nucleus by sorting, for (batch row, row of self.p) pairs no draw found it for: keep the tokens
        at least as likely as the last one of the shortest sorted prefix holding top_p, then inverse CDF with draw
        MAX_DRAWS."""
        rows = [row for row, _ in left]
        index = torch.tensor([i for _, i in left], device=self.p.device)
        p = self.p.index_select(0, index)  # [n, V]
        top_p = self.top_p.index_select(0, index + self.num_k)  # [n]
        ordered = p.sort(dim=-1, descending=True).values  # [n, V]
        kept = (ordered.cumsum(dim=-1) - ordered) < top_p[:, None]  # [n, V], a prefix
        last = (kept.sum(dim=-1, keepdim=True) - 1).clamp(min=0)  # [n, 1]
        edge = ordered.gather(1, last)  # [n, 1]
        u = torch.tensor([[uniform(self.batch.seeds[r], self.batch.indices[r], MAX_DRAWS)] for r in rows],
                         dtype=torch.float32).to(p.device)
        picked = _inverse_cdf(torch.where(p >= edge, p, 0.0).cumsum(dim=-1), u)[:, 0]
        return dict(zip(rows, picked.tolist()))


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """cdf: [n, V] non-decreasing (unnormalised); u: [n, A] in (0, 1) -> [n, A] the first index whose cumulative
    mass exceeds u times the row's total (zero-probability tokens are never picked)."""
    target = u * cdf[:, -1:]
    return torch.searchsorted(cdf, target.contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)

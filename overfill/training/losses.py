"""The decoder's training loss in both modes, on batches of (prompt, response) examples.

overfill  The full model (frozen, eval, no grad) reads the prompt; the decoder is teacher-forced on the response with
          the full model's prompt KV as its past, as it decodes at inference (docs/architecture.md, "The
          two-stage step"). It never sees a prompt token. At inference the full model samples r_0, so the decoder learns
          r_1 .. r_{n-1} from r_0 .. r_{n-2}.
pruned    The baseline: the same decoder reads prompt + response itself and learns r_0 .. r_{n-1}.

Loss = ce_weight * CE(response tokens) + kd_weight * KL(full || decoder), the KL over the full vocabulary at the same
positions, the full model reading prompt + response. In overfill mode that costs little: one forward of the full model
over prompt + response gives both the prompt KV (its first P positions) and the teacher's logits; without KD it reads
the prompt only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from overfill.engine.step import right_pad
from overfill.training.data import Example

MODES = ("overfill", "pruned")


@dataclass
class LossOutput:
    loss: torch.Tensor        # what to backpropagate
    ce: float
    kd: float | None
    num_tokens: int


def left_pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ending at the same index: ids [B, T] and mask [B, T] (bool), the padding first."""
    ids, mask = right_pad([row[::-1] for row in rows], device)
    return ids.flip(1), mask.flip(1)


@dataclass
class _Forward:
    logits: torch.Tensor          # [B, R, V] the decoder's, R = response positions scored
    teacher: torch.Tensor | None  # [B, R, V] the full model's at the same positions, or None
    targets: torch.Tensor         # [B, R] token ids; scored where `scored`
    scored: torch.Tensor          # [B, R] bool


def _overfill_forward(full, decoder, examples: list[Example], with_teacher: bool, device) -> _Forward:
    # 1) Prompts left padded (every row's past ends at index P), responses right padded after them: the decoder reads
    #    r_0 .. r_{n-2}, at positions continuing each row's own prompt.
    prompt_ids, prompt_mask = left_pad([e.prompt_ids for e in examples], device)  # [B, P]
    response_ids, response_mask = right_pad([e.response_ids[:-1] for e in examples], device)  # [B, R]
    targets, _ = right_pad([e.response_ids[1:] for e in examples], device)  # [B, R]: r_1 .. r_{n-1}
    num_prompt, num_response = prompt_ids.shape[1], response_ids.shape[1]
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()  # [B, P + R]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # 2) The full model: the prompt KV, and with KD its logits on the response in the same forward.
    teacher = None
    with torch.no_grad():
        if with_teacher:
            out = full(input_ids=torch.cat([prompt_ids, response_ids], dim=1), attention_mask=mask,
                       position_ids=positions, use_cache=True, logits_to_keep=num_response)
            teacher, past = out.logits, out.cache
            past.crop(-num_response)  # keep the prompt's KV only
        else:
            # logits_to_keep=1: only the KV is needed, not the vocabulary projection of every prompt position.
            past = full(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                        position_ids=positions[:, :num_prompt], use_cache=True, logits_to_keep=1).cache
    # 3) The decoder on the responses, attending to the full model's prompt KV.
    logits = decoder(input_ids=response_ids, attention_mask=mask, position_ids=positions[:, num_prompt:],
                     cache=past, use_cache=True).logits
    return _Forward(logits, teacher, targets, response_mask)


def _pruned_forward(full, decoder, examples: list[Example], with_teacher: bool, device) -> _Forward:
    """The decoder reads prompt + response[:-1] itself; position len(prompt) + j - 1 predicts r_j."""
    ids, mask = right_pad([e.prompt_ids + e.response_ids[:-1] for e in examples], device)  # [B, L]
    targets, _ = right_pad([[0] * (len(e.prompt_ids) - 1) + e.response_ids for e in examples], device)
    scored = torch.zeros_like(mask)
    for row, e in enumerate(examples):
        scored[row, len(e.prompt_ids) - 1:len(e.prompt_ids) + len(e.response_ids) - 1] = True
    positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
    logits = decoder(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=False).logits
    teacher = None
    if with_teacher:
        with torch.no_grad():
            teacher = full(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=False).logits
    return _Forward(logits, teacher, targets, scored)


def decoder_loss(full, decoder, examples: list[Example], mode: str, kd_weight: float = 0.0,
                 ce_weight: float = 1.0) -> LossOutput:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "overfill" and all(len(e.response_ids) < 2 for e in examples):
        raise ValueError("overfill mode needs responses of at least 2 tokens (the first comes from the full model)")
    device = next(decoder.parameters()).device
    forward = (_overfill_forward if mode == "overfill" else _pruned_forward)(full, decoder, examples, kd_weight > 0,
                                                                             device)
    # Every scored position, in one canonical order (row by row, response index ascending): [N, V] and [N].
    logits = forward.logits[forward.scored].float()
    targets = forward.targets[forward.scored]
    ce = F.cross_entropy(logits, targets)
    loss = ce_weight * ce
    kd = None
    if kd_weight > 0:
        teacher = forward.teacher[forward.scored].float()
        kd_term = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True,
                           reduction="batchmean")
        loss = loss + kd_weight * kd_term
        kd = kd_term.item()
    return LossOutput(loss=loss, ce=ce.item(), kd=kd, num_tokens=len(targets))

"""The decoder's training loss in both modes (DESIGN §2), on right-padded batches of (prompt, response) examples.

overfill  The full model (frozen, eval, no grad) reads the prompt with `use_cache`; the decoder is teacher-forced
          on the response with that KV as its past. It never sees a prompt token. At inference the full model samples
          r_0, so the decoder learns r_1 .. r_{n-1} from r_0 .. r_{n-2}.
pruned    The baseline: the same decoder reads prompt + response itself and learns r_0 .. r_{n-1}.

Targets are gathered in one canonical order (row by row, response index ascending), so the optional
distillation term compares the decoder with the full model token for token: KL(full || decoder) on the same
positions, the full model reading prompt + response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from overfill.training.data import Example


@dataclass
class LossOutput:
    loss: torch.Tensor        # what to backpropagate
    ce: float
    kd: float | None
    num_tokens: int


def _sequence_batch(examples: list[Example], with_last_response_token: bool, device) -> tuple[torch.Tensor, ...]:
    """prompt + response (without its last token unless asked) per row, right padded.
    Returns ids [B, L], attention mask [B, L], positions [B, L]."""
    rows = [e.prompt_ids + (e.response_ids if with_last_response_token else e.response_ids[:-1]) for e in examples]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
    positions = torch.arange(width).expand(len(rows), width)
    return ids.to(device), mask.to(device), positions.to(device)


def _targets(examples: list[Example], first: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For response indices j >= first of every row: (row index [N], position in prompt+response predicting r_j [N],
    r_j [N])."""
    rows, positions, tokens = [], [], []
    for b, e in enumerate(examples):
        for j in range(first, len(e.response_ids)):
            rows.append(b)
            positions.append(len(e.prompt_ids) + j - 1)
            tokens.append(e.response_ids[j])
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(rows), as_tensor(positions), as_tensor(tokens)


def _overfill_logits(full, decoder, examples: list[Example], device) -> torch.Tensor:
    """Decoder logits [B, R-1, V] on responses (inputs r_0..r_{n-2}), attending to the full model's prompt KV."""
    # 1) The full model's prompt KV, prompts left padded so every row's past ends at the same index.
    width = max(len(e.prompt_ids) for e in examples)
    prompt_ids = torch.zeros(len(examples), width, dtype=torch.long)
    prompt_mask = torch.zeros(len(examples), width, dtype=torch.long)
    for b, e in enumerate(examples):
        prompt_ids[b, width - len(e.prompt_ids):] = torch.tensor(e.prompt_ids)
        prompt_mask[b, width - len(e.prompt_ids):] = 1
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        past = full(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions,
                    use_cache=True).past_key_values
    # 2) The decoder on the responses, right padded, positions continuing each row's own prompt length.
    length = max(len(e.response_ids) - 1 for e in examples)
    response_ids = torch.zeros(len(examples), length, dtype=torch.long)
    response_mask = torch.zeros(len(examples), length, dtype=torch.long)
    for b, e in enumerate(examples):
        response_ids[b, :len(e.response_ids) - 1] = torch.tensor(e.response_ids[:-1])
        response_mask[b, :len(e.response_ids) - 1] = 1
    prompt_lengths = torch.tensor([len(e.prompt_ids) for e in examples])
    positions = prompt_lengths[:, None] + torch.arange(length)  # [B, R-1]
    return decoder(input_ids=response_ids.to(device),
                   attention_mask=torch.cat([prompt_mask, response_mask.to(device)], dim=1),
                   position_ids=positions.to(device), past_key_values=past, use_cache=True).logits


def decoder_loss(full, decoder, examples: list[Example], mode: str, kd_weight: float = 0.0) -> LossOutput:
    device = next(decoder.parameters()).device
    first = 1 if mode == "overfill" else 0
    if mode == "overfill" and all(len(e.response_ids) < 2 for e in examples):
        raise ValueError("overfill mode needs responses of at least 2 tokens (the first comes from the full model)")
    rows, positions, tokens = _targets(examples, first, device)

    # 1) Decoder logits at every target, [N, V].
    if mode == "overfill":
        logits = _overfill_logits(full, decoder, examples, device)
        prompt_lengths = torch.tensor([len(e.prompt_ids) for e in examples], device=device)
        logits = logits[rows, positions - prompt_lengths[rows]]  # response index j-1 predicts r_j
    elif mode == "pruned":
        ids, mask, seq_positions = _sequence_batch(examples, with_last_response_token=False, device=device)
        logits = decoder(input_ids=ids, attention_mask=mask, position_ids=seq_positions, use_cache=False).logits
        logits = logits[rows, positions]
    else:
        raise ValueError(f"mode must be overfill or pruned, got {mode!r}")
    logits = logits.float()
    ce = F.cross_entropy(logits, tokens)

    # 2) Optional distillation from the full model's distribution on the same tokens.
    kd = None
    loss = ce
    if kd_weight > 0:
        ids, mask, seq_positions = _sequence_batch(examples, with_last_response_token=False, device=device)
        with torch.no_grad():
            teacher = full(input_ids=ids, attention_mask=mask, position_ids=seq_positions,
                           use_cache=False).logits[rows, positions].float()
        kd_term = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True,
                           reduction="batchmean")
        loss = ce + kd_weight * kd_term
        kd = kd_term.item()
    return LossOutput(loss=loss, ce=ce.item(), kd=kd, num_tokens=len(tokens))

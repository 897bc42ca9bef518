"""Calibration: read calibration samples, and measure residual-channel importance on the full model (Minitron).

A sample is token ids split where OverFill would split them: a prompt (the full model computes it; the decoder only
attends to its KV) and what follows (the tokens the decoder computes). Reconstruction fits on the latter only.
    {"messages": [..., {"role": "assistant", ...}]}  prompt = the turns before the last assistant turn, rendered
    (or ShareGPT {"conversations": [...]})
                                                     with the chat template and its generation prompt; the rest =
                                                     that turn's content and EOS (as in training data)
    {"messages": [...]} without a final assistant turn, {"text": ...}   the first half of the tokens is the prompt

Residual (hidden) channel importance: for the outputs of both per-layer RMSNorms, mean over each sample's tokens,
L2 norm over the samples, summed over layers. (MLP channels are chosen layer by layer in reconstruction.py.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm import tqdm

from overfill.prompts import has_chat_template, render_chat
from overfill.training.data import TrainingDataError, parse_messages

SHIPPED_CALIBRATION = "overfill/data/calibration.jsonl (shipped)"


class CalibrationDataError(ValueError):
    """A calibration file line is not `{"text": ...}` or `{"messages": [...]}`."""


@dataclass(frozen=True)
class CalibrationSample:
    token_ids: list[int]
    num_prompt_tokens: int  # token_ids[:num_prompt_tokens] is prompt; at least one token follows it


@dataclass
class CalibrationSet:
    samples: list[CalibrationSample]
    sources: list[str]
    sha256: str  # of the files' bytes, in order

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)


def default_calibration_path() -> Path:
    return Path(str(resources.files("overfill") / "data" / "calibration.jsonl"))


def load_calibration(paths: list[str | Path] | None, tokenizer, num_samples: int | None = None,
                     max_length: int = 512) -> CalibrationSet:
    """Read JSONL files of `{"text": ...}` or `{"messages": [...]}` lines (None: the shipped set), in order, keeping
    at most `max_length` tokens per sample and the first `num_samples` samples (all when None). Extra keys are
    ignored, so self-distillation data calibrates as it is. Errors name the file and line."""
    files = [Path(p) for p in paths] if paths else [default_calibration_path()]
    digest = hashlib.sha256()
    samples: list[CalibrationSample] = []
    for file in files:
        raw = file.read_bytes()
        digest.update(raw)
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            sample = _line_sample(line, tokenizer, max_length, f"{file}:{number}")
            if sample is not None:
                samples.append(sample)
            if num_samples is not None and len(samples) >= num_samples:
                break
    if not samples:
        raise CalibrationDataError(f"{', '.join(map(str, files))}: no calibration samples")
    sources = [str(p) for p in paths] if paths else [SHIPPED_CALIBRATION]
    return CalibrationSet(samples=samples, sources=sources, sha256=digest.hexdigest())


def _line_sample(line: str, tokenizer, max_length: int, where: str) -> CalibrationSample | None:
    """One line -> a sample, or None when it has fewer than two tokens."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CalibrationDataError(f"{where}: not valid JSON ({e.msg})") from e
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    if isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
        return _split_half(encode(record["text"])[:max_length])
    if isinstance(record, dict) and (record.get("messages") or record.get("conversations")):
        try:
            messages = parse_messages(record, where)
        except TrainingDataError as e:
            raise CalibrationDataError(str(e)) from e
        if not has_chat_template(tokenizer):
            return _split_half(encode("\n".join(m["content"] for m in messages))[:max_length])
        if messages[-1]["role"] == "assistant" and len(messages) > 1:
            prompt = encode(render_chat(tokenizer, messages[:-1]))
            response = encode(messages[-1]["content"]) + [tokenizer.eos_token_id]
            ids = (prompt + response)[:max_length]
            if len(prompt) < len(ids):
                return CalibrationSample(ids, len(prompt))
            return _split_half(ids)
        return _split_half(encode(tokenizer.apply_chat_template(messages, tokenize=False))[:max_length])
    raise CalibrationDataError(f"{where}: expected {{\"text\": \"...\"}}, {{\"messages\": [...]}} or "
                               f"{{\"conversations\": [...]}}")


def _split_half(ids: list[int]) -> CalibrationSample | None:
    return CalibrationSample(ids, len(ids) // 2) if len(ids) >= 2 else None


@dataclass
class Importance:
    hidden: torch.Tensor  # [D] float32
    num_samples: int
    num_tokens: int


class _MaskedMeanSquares:
    """Accumulates, per channel, the sum over samples of (mean over the sample's real tokens)^2."""

    def __init__(self):
        self.sum_squares: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # [B, T] float, set before each batch

    def add(self, activations: torch.Tensor) -> None:
        """activations: [B, T, C]."""
        mask = self.mask[:, :, None]  # [B, T, 1]
        means = (activations.float() * mask).sum(1) / mask.sum(1)  # [B, C]
        squares = means.pow(2).sum(0)  # [C]
        self.sum_squares = squares if self.sum_squares is None else self.sum_squares + squares

    def l2(self) -> torch.Tensor:
        return self.sum_squares.sqrt()


@torch.no_grad()
def estimate_importance(model, samples: list[CalibrationSample], pad_id: int, batch_size: int = 8,
                        progress: bool = True) -> Importance:
    """Run the calibration samples through the full model with hooks and return residual-channel importance."""
    layers = model.model.layers
    device = next(model.parameters()).device
    norm_stats = [(_MaskedMeanSquares(), _MaskedMeanSquares()) for _ in layers]
    handles = []
    for layer, (attn_norm, mlp_norm) in zip(layers, norm_stats):
        handles.append(layer.input_layernorm.register_forward_hook(lambda m, i, o, s=attn_norm: s.add(o)))
        handles.append(layer.post_attention_layernorm.register_forward_hook(lambda m, i, o, s=mlp_norm: s.add(o)))
    all_stats = [s for pair in norm_stats for s in pair]

    # Batch samples of similar length together: padding costs compute but, masked out, adds nothing.
    ordered = sorted((s.token_ids for s in samples), key=len)
    num_tokens = 0
    try:
        batches = range(0, len(ordered), batch_size)
        for start in tqdm(batches, desc="importance", unit="batch", disable=not progress):
            encoded = ordered[start:start + batch_size]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # [B, T], right padded
            mask = torch.zeros(len(encoded), width)
            for row, ids in enumerate(encoded):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            for stats in all_stats:
                stats.mask = mask.to(device)
            # The layers only: the importance needs no logits.
            model.model(input_ids=input_ids.to(device), attention_mask=mask.to(device, torch.long), use_cache=False)
            num_tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()

    hidden = sum(a.l2() + b.l2() for a, b in norm_stats)  # [D]
    return Importance(hidden=hidden.cpu(), num_samples=len(ordered), num_tokens=num_tokens)

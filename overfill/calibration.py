"""Calibration: read calibration texts and measure channel importance on the full model (DESIGN §1, Minitron style).

Importance of a channel = for each hooked activation, mean over the sequence (padding masked out), L2 norm over the
samples, then summed over layers:
    hidden channels (D): outputs of both per-layer RMSNorms (input_layernorm, post_attention_layernorm)
    MLP channels (I, per layer): the input of down_proj (act(gate) * up)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm import tqdm

DEFAULT_CALIBRATION = "overfill/data/calibration.jsonl (shipped)"


class CalibrationDataError(ValueError):
    """A calibration file line is not `{"text": ...}` or `{"messages": [...]}`."""


@dataclass
class CalibrationSet:
    texts: list[str]
    source: str
    sha256: str


def default_calibration_path() -> Path:
    return Path(str(resources.files("overfill") / "data" / "calibration.jsonl"))


def load_calibration(path: str | Path | None, tokenizer, num_samples: int | None = None) -> CalibrationSet:
    """Read a JSONL file of `{"text": ...}` or `{"messages": [...]}` lines (messages rendered with the chat template).

    The first `num_samples` usable lines are taken (all when None). Errors name the file and line.
    """
    file = Path(path) if path is not None else default_calibration_path()
    raw = file.read_bytes()
    texts: list[str] = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        texts.append(_line_text(line, tokenizer, f"{file}:{number}"))
        if num_samples is not None and len(texts) >= num_samples:
            break
    if not texts:
        raise CalibrationDataError(f"{file}: no calibration samples")
    source = str(path) if path is not None else DEFAULT_CALIBRATION
    return CalibrationSet(texts=texts, source=source, sha256=hashlib.sha256(raw).hexdigest())


def _line_text(line: str, tokenizer, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CalibrationDataError(f"{where}: not valid JSON ({e.msg})") from e
    if isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
        return record["text"]
    if isinstance(record, dict) and isinstance(record.get("messages"), list) and record["messages"]:
        messages = record["messages"]
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                   for m in messages):
            raise CalibrationDataError(f"{where}: every message needs string 'role' and 'content'")
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(m["content"] for m in messages)
    raise CalibrationDataError(f"{where}: expected {{\"text\": \"...\"}} or {{\"messages\": [...]}}")


@dataclass
class Importance:
    hidden: torch.Tensor  # [D] float32
    mlp: torch.Tensor     # [L, I] float32
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
def estimate_importance(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 512,
                        progress: bool = True) -> Importance:
    """Run the calibration texts through the full model with hooks and return channel importances."""
    layers = model.model.layers
    device = next(model.parameters()).device
    norm_stats = [(_MaskedMeanSquares(), _MaskedMeanSquares()) for _ in layers]
    mlp_stats = [_MaskedMeanSquares() for _ in layers]
    handles = []
    for layer, (attn_norm, mlp_norm), mlp_in in zip(layers, norm_stats, mlp_stats):
        handles.append(layer.input_layernorm.register_forward_hook(lambda m, i, o, s=attn_norm: s.add(o)))
        handles.append(layer.post_attention_layernorm.register_forward_hook(lambda m, i, o, s=mlp_norm: s.add(o)))
        handles.append(layer.mlp.down_proj.register_forward_hook(lambda m, i, o, s=mlp_in: s.add(i[0])))
    all_stats = [s for pair in norm_stats for s in pair] + mlp_stats

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Batch samples of similar length together: padding costs compute but, masked out, adds nothing.
    samples = [ids[:max_length] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if ids]
    samples.sort(key=len)
    num_tokens = 0
    try:
        batches = range(0, len(samples), batch_size)
        for start in tqdm(batches, desc="calibrating", unit="batch", disable=not progress):
            encoded = samples[start:start + batch_size]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # [B, T], right padded
            mask = torch.zeros(len(encoded), width)
            for row, ids in enumerate(encoded):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            for stats in all_stats:
                stats.mask = mask.to(device)
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device, torch.long), use_cache=False)
            num_tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()

    hidden = sum(a.l2() + b.l2() for a, b in norm_stats)  # [D]
    mlp = torch.stack([s.l2() for s in mlp_stats])  # [L, I]
    return Importance(hidden=hidden.cpu(), mlp=mlp.cpu(), num_samples=len(samples), num_tokens=num_tokens)

"""`overfill train`: train a decoder in `overfill` mode (on the frozen full model's prompt KV) or `pruned` mode.

AdamW, linear warm-up then cosine decay, gradient accumulation, gradient clipping, bf16 autocast on CUDA. Batches
are a pure function of (seed, step), and checkpoints hold the model, optimizer, schedule and RNG state, so
`--resume` continues bit for bit. The output is a decoder directory whose `overfill.json` gains a training entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from overfill.decoder_checkpoint import check_decoder_fits, load_decoder, read_manifest, save_decoder
from overfill.default_decoder import resolve_decoder
from overfill.model_loading import load_model
from overfill.training.data import Example, load_dataset
from overfill.training.losses import decoder_loss

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainSpec:
    model: str
    decoder: str
    data: str
    mode: str                       # overfill | pruned
    output: str
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int | None = None  # None: 5% of steps
    weight_decay: float = 0.0
    kd_weight: float = 0.0
    max_length: int = 1024
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 50
    device: str = "cpu"

    def __post_init__(self):
        if self.mode not in ("overfill", "pruned"):
            raise ValueError(f"mode must be overfill or pruned, got {self.mode!r}")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.kd_weight < 0:
            raise ValueError("lr must be > 0 and kd_weight >= 0")

    @property
    def num_warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)


def learning_rate_factor(step: int, spec: TrainSpec) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < spec.num_warmup:
        return (step + 1) / spec.num_warmup
    progress = (step - spec.num_warmup) / max(1, spec.steps - spec.num_warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_for(step: int, micro: int, examples: list[Example], spec: TrainSpec) -> list[Example]:
    """The examples of micro-batch `micro` of `step`: epochs walk seeded permutations; a pure function of the step."""
    per_step = spec.batch_size * spec.grad_accum
    start = step * per_step + micro * spec.batch_size
    picked = []
    for index in range(start, start + spec.batch_size):
        epoch, offset = divmod(index, len(examples))
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(spec.seed * 100003 + epoch))
        picked.append(examples[int(order[offset])])
    return picked


def train(spec: TrainSpec, resume: bool = False, progress: bool = True) -> dict:
    torch.manual_seed(spec.seed)
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    decoder_dir = resolve_decoder(spec.decoder, spec.model)

    # 1) Models: the full one frozen in eval mode, the decoder trainable; the decoder must belong to the full model.
    full = load_model(spec.model, dtype="float32", device=spec.device)
    check_decoder_fits(decoder_dir, full.model.config, full.model)
    for p in full.model.parameters():
        p.requires_grad_(False)
    full.model.eval()
    decoder = load_decoder(decoder_dir, dtype="float32", device=spec.device)
    decoder.train()
    data = load_dataset(spec.data, full.tokenizer, spec.max_length)
    if spec.mode == "overfill":
        data.examples = [e for e in data.examples if len(e.response_ids) >= 2]

    optimizer = torch.optim.AdamW(decoder.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, spec))
    start_step = 0
    if resume and (output / CHECKPOINT).is_file():
        state = torch.load(output / CHECKPOINT, weights_only=False)
        if state["spec"] != asdict(spec):
            raise ValueError(f"--resume: {output / CHECKPOINT} was written with other settings: {state['spec']}")
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        start_step = state["step"]
        log.info("resuming at step %d of %d", start_step, spec.steps)

    # 2) The loop.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(spec.device).type == "cuda" else None
    history, tokens, started = [], 0, time.perf_counter()
    bar = tqdm(range(start_step, spec.steps), desc=f"train {spec.mode}", disable=not progress,
               initial=start_step, total=spec.steps)
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        ce_sum = kd_sum = 0.0
        for micro in range(spec.grad_accum):
            examples = batch_for(step, micro, data.examples, spec)
            with autocast or contextlib.nullcontext():
                out = decoder_loss(full.model, decoder, examples, spec.mode, spec.kd_weight)
            (out.loss / spec.grad_accum).backward()
            ce_sum += out.ce / spec.grad_accum
            kd_sum += (out.kd or 0.0) / spec.grad_accum
            tokens += out.num_tokens
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), spec.max_grad_norm)
        optimizer.step()
        schedule.step()
        history.append({"step": step + 1, "ce": ce_sum, "kd": kd_sum if spec.kd_weight else None,
                        "lr": schedule.get_last_lr()[0]})
        bar.set_postfix(loss=f"{ce_sum:.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        if (step + 1) % spec.save_every == 0 or step + 1 == spec.steps:
            _save_checkpoint(output, spec, step + 1, decoder, optimizer, schedule)

    # 3) The trained decoder, with its provenance.
    seconds = time.perf_counter() - started
    manifest = read_manifest(decoder_dir)
    manifest.training.append({
        "mode": spec.mode, "data": data.source, "data_sha256": _sha256(spec.data), "examples": len(data.examples),
        "dropped_too_long": data.num_dropped, "steps": spec.steps, "batch_size": spec.batch_size,
        "grad_accum": spec.grad_accum, "lr": spec.lr, "warmup_steps": spec.num_warmup, "kd_weight": spec.kd_weight,
        "seed": spec.seed, "final_loss": history[-1]["ce"] if history else None,
        "seconds_this_run": round(seconds, 1), "response_tokens_this_run": tokens,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    decoder.eval()
    save_decoder(decoder, full.tokenizer, manifest, output)
    return {"history": history, "seconds": seconds, "tokens": tokens, "output": str(output)}


def _save_checkpoint(output: Path, spec: TrainSpec, step: int, decoder, optimizer, schedule) -> None:
    state = {"spec": asdict(spec), "step": step, "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "rng": torch.get_rng_state()}
    staging = output / (CHECKPOINT + ".tmp")
    torch.save(state, staging)
    shutil.move(staging, output / CHECKPOINT)


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


"""`overfill train`: train a decoder in `overfill` mode (on the frozen full model's prompt KV) or `pruned` mode.

AdamW, linear warm-up then cosine decay, gradient accumulation, gradient clipping, bf16 autocast where the hardware
has it natively (precision.py). One loop,
`train_loop`, serves both ways of training: in this process (`num_workers` 1, the default) or as one rank of a
data-parallel group on Ray Train (`num_workers` > 1, distributed.py). It asks a `World` for the little that differs:
the device, the DDP wrapper, sums over ranks, and what to do after a step.

Batches are a pure function of (seed, step, rank), and checkpoints hold the model, optimizer, schedule and RNG state,
so `--resume` continues bit for bit. The output is a decoder directory whose `overfill.json` gains a training entry.
"""

from __future__ import annotations

import contextlib
import functools
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
from overfill.training.precision import PRECISIONS, autocast_for, resolve_precision

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
TRAINABLE = ("all", "no-embeddings", "mlp")


@dataclass
class TrainSpec:
    model: str
    decoder: str
    data: str
    mode: str                       # overfill | pruned
    output: str
    steps: int = 200
    batch_size: int = 8             # examples per micro-batch per worker
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int | None = None  # None: 5% of steps
    weight_decay: float = 0.0
    kd_weight: float = 0.0          # KL(full || decoder) on the response tokens (losses.py)
    ce_weight: float = 1.0          # cross-entropy on the response tokens
    trainable: str = "all"          # all | no-embeddings (embeddings and a tied lm_head frozen) | mlp
    max_length: int = 1024
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 50
    device: str = "cpu"             # with num_workers > 1: cpu (gloo) or cuda (NCCL, one GPU per worker)
    precision: str = "auto"         # auto | bf16 | fp32 (precision.py)
    num_workers: int = 1            # data-parallel workers; > 1 trains on Ray Train (distributed.py)

    def __post_init__(self):
        if self.mode not in ("overfill", "pruned"):
            raise ValueError(f"mode must be overfill or pruned, got {self.mode!r}")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "max_length", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.kd_weight < 0 or self.ce_weight < 0 or self.kd_weight + self.ce_weight == 0:
            raise ValueError("lr must be > 0, kd_weight and ce_weight >= 0, and not both 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}, got {self.trainable!r}")

    @property
    def num_warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step, over every micro-batch of every worker."""
        return self.batch_size * self.grad_accum * self.num_workers


class World:
    """Where `train_loop` runs: this process alone (this class), or one rank of a data-parallel group (distributed.py's
    `RayWorld`). Ranks differ only in the examples they read; every rank holds the same decoder after every step."""

    rank = 0
    size = 1

    def device(self, spec: TrainSpec) -> torch.device:
        return torch.device(spec.device)

    def wrap(self, decoder: torch.nn.Module) -> torch.nn.Module:
        """The module the loss calls: the decoder itself, or a DDP wrapper that averages gradients over ranks."""
        return decoder

    def no_sync(self, model: torch.nn.Module):
        """A context whose backward passes accumulate gradients locally (every micro-batch but a step's last)."""
        return contextlib.nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks."""
        return values

    def resume_state(self, output: Path, resume: bool) -> dict | None:
        """The checkpoint to continue from, or None to start at step 0."""
        path = output / CHECKPOINT
        return torch.load(path, map_location="cpu", weights_only=False) if resume and path.is_file() else None

    def after_step(self, record: dict, saved: bool) -> None:
        """Called on every rank after every step; `saved`: rank 0 has just written OUTPUT/checkpoint.pt."""


def learning_rate_factor(step: int, spec: TrainSpec) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < spec.num_warmup:
        return (step + 1) / spec.num_warmup
    progress = (step - spec.num_warmup) / max(1, spec.steps - spec.num_warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def trainable_parameters(decoder: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    """Mark what `trainable` names as trainable (the rest frozen) and return it. Freezing the embeddings (and so a
    tied lm_head) saves their large gradient and optimizer update; `mlp` trains only the blocks pruning cut."""
    chosen = []
    for name, parameter in decoder.named_parameters():
        keep = (trainable == "all" or (trainable == "mlp" and ".mlp." in name)
                or (trainable == "no-embeddings" and "embed_tokens" not in name and "lm_head" not in name))
        parameter.requires_grad_(keep)
        if keep:
            chosen.append(parameter)
    return chosen


def batch_for(step: int, micro: int, examples: list[Example], spec: TrainSpec, rank: int = 0) -> list[Example]:
    """The examples rank `rank` reads for micro-batch `micro` of `step`: a pure function of (seed, step, micro, rank).

    One global order walks seeded permutations, epoch after epoch. A step takes the next `global_batch` examples,
    micro-batch after micro-batch, and each micro-batch is `num_workers` consecutive slices of `batch_size`, one per
    rank. So the ranks of a micro-batch together read exactly what one process with batch_size x num_workers reads.
    """
    start = ((step * spec.grad_accum + micro) * spec.num_workers + rank) * spec.batch_size
    picked = []
    for index in range(start, start + spec.batch_size):
        epoch, offset = divmod(index, len(examples))
        picked.append(examples[_epoch_order(spec.seed, epoch, len(examples))[offset]])
    return picked


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> list[int]:
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()


def train(spec: TrainSpec, resume: bool = False, progress: bool = True) -> dict:
    """Train in this process, or with `num_workers` > 1 on Ray Train (which this module never imports)."""
    if spec.num_workers > 1:
        from overfill.training.distributed import train_on_ray

        return train_on_ray(spec, resume=resume, progress=progress)
    return train_loop(spec, World(), resume=resume, progress=progress)


@dataclass
class _Run:
    """What one step needs: the models (`model` is what the loss calls, the decoder or its DDP wrapper)."""
    spec: TrainSpec
    full: torch.nn.Module
    model: torch.nn.Module
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    examples: list[Example]
    autocast: torch.autocast | None


def train_loop(spec: TrainSpec, world: World, resume: bool = False, progress: bool = True,
        decoder_dir: Path | None = None) -> dict:
    """The training loop, the same on every rank. Rank 0 writes the checkpoint and the trained decoder."""
    torch.manual_seed(spec.seed)
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    decoder_dir = decoder_dir or resolve_decoder(spec.decoder, spec.model)
    device = world.device(spec)

    # 1) Models: the full one frozen in eval mode, the decoder trainable; the decoder must belong to the full model.
    full = load_model(spec.model, dtype="float32", device=device)
    check_decoder_fits(decoder_dir, full.model.config, full.model)
    for p in full.model.parameters():
        p.requires_grad_(False)
    full.model.eval()
    decoder = load_decoder(decoder_dir, dtype="float32", device=device)
    decoder.train()
    parameters = trainable_parameters(decoder, spec.trainable)
    data = load_dataset(spec.data, full.tokenizer, spec.max_length)
    if spec.mode == "overfill":
        data.examples = [e for e in data.examples if len(e.response_ids) >= 2]

    # 2) Optimizer and schedule, restored from the checkpoint when resuming; then the wrapper (DDP on a group).
    optimizer = torch.optim.AdamW(parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, spec))
    start_step = 0
    state = world.resume_state(output, resume)
    if state is not None:
        if state["spec"] != asdict(spec):
            raise ValueError(f"--resume: {output / CHECKPOINT} was written with other settings: {state['spec']}")
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        start_step = state["step"]
        log.info("resuming at step %d of %d", start_step, spec.steps)
    precision = resolve_precision(spec.precision, device)
    autocast = autocast_for(precision, device)
    current = _Run(spec, full.model, world.wrap(decoder), parameters, optimizer, schedule, data.examples, autocast)

    # 3) The loop.
    history, tokens, started = [], 0, time.perf_counter()
    bar = tqdm(range(start_step, spec.steps), desc=f"train {spec.mode}", disable=not progress or world.size > 1,
               initial=start_step, total=spec.steps)
    for step in bar:
        record = train_step(step, current, world)
        tokens += record.pop("num_tokens")
        history.append(record)
        bar.set_postfix(loss=f"{record['ce']:.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        saved = (step + 1) % spec.save_every == 0 or step + 1 == spec.steps
        if saved and world.rank == 0:
            _save_checkpoint(output, spec, step + 1, decoder, optimizer, schedule)
        world.after_step(dict(record, num_tokens=tokens, seconds=time.perf_counter() - started), saved)

    # 4) The trained decoder, with its provenance.
    seconds = time.perf_counter() - started
    result = {"history": history, "seconds": seconds, "tokens": tokens, "output": str(output)}
    if world.rank != 0:
        return result
    manifest = read_manifest(decoder_dir)
    manifest.training.append({
        "mode": spec.mode, "full_model": spec.model, "parameter_fraction": round(manifest.parameter_fraction, 4),
        "data": data.source, "data_sha256": _sha256(spec.data), "examples": len(data.examples),
        "dropped_too_long": data.num_dropped, "steps": spec.steps, "batch_size": spec.batch_size,
        "grad_accum": spec.grad_accum, "num_workers": spec.num_workers, "global_batch": spec.global_batch,
        "device": device.type, "precision": precision, "lr": spec.lr, "warmup_steps": spec.num_warmup, "kd_weight": spec.kd_weight,
        "ce_weight": spec.ce_weight, "trainable": spec.trainable, "truncated_kept": data.num_truncated,
        "seed": spec.seed, "final_loss": history[-1]["ce"] if history else None,
        "seconds_this_run": round(seconds, 1), "response_tokens_this_run": tokens,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    decoder.eval()
    save_decoder(decoder, full.tokenizer, manifest, output)
    return result


def train_step(step: int, current: _Run, world: World) -> dict:
    """One optimizer step over the global batch: each rank's micro-batches, gradients averaged over the ranks.

    The loss of a micro-batch is a mean over its response tokens (losses.py), and DDP averages the ranks' gradients.
    Each rank therefore weights its loss by its share of the micro-batch's tokens, times the number of ranks: the
    average of the weighted gradients is then the gradient of the mean over all the micro-batch's tokens, as one
    process with the whole micro-batch computes it. In one process the weight is exactly 1.
    """
    spec = current.spec
    current.optimizer.zero_grad(set_to_none=True)
    ce_sum = kd_sum = 0.0
    num_tokens = 0
    for micro in range(spec.grad_accum):
        examples = batch_for(step, micro, current.examples, spec, world.rank)
        last = micro == spec.grad_accum - 1
        with contextlib.nullcontext() if last else world.no_sync(current.model):
            with current.autocast or contextlib.nullcontext():
                out = decoder_loss(current.full, current.model, examples, spec.mode, spec.kd_weight, spec.ce_weight)
            (micro_tokens,) = world.sum([out.num_tokens])
            share = out.num_tokens / micro_tokens
            (out.loss * (share * world.size) / spec.grad_accum).backward()
        micro_ce, micro_kd = world.sum([out.ce * share, (out.kd or 0.0) * share])
        ce_sum += micro_ce / spec.grad_accum
        kd_sum += micro_kd / spec.grad_accum
        num_tokens += int(micro_tokens)
    torch.nn.utils.clip_grad_norm_(current.parameters, spec.max_grad_norm)
    current.optimizer.step()
    current.schedule.step()
    return {"step": step + 1, "ce": ce_sum, "kd": kd_sum if spec.kd_weight else None,
            "lr": current.schedule.get_last_lr()[0], "num_tokens": num_tokens}


def _save_checkpoint(output: Path, spec: TrainSpec, step: int, decoder, optimizer, schedule) -> None:
    state = {"spec": asdict(spec), "step": step, "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "rng": torch.get_rng_state()}
    staging = output / (CHECKPOINT + ".tmp")
    torch.save(state, staging)
    shutil.move(staging, output / CHECKPOINT)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

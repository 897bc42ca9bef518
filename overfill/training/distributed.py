"""`overfill train --num-workers N [--use-gpu]`: trainer.py's loop on N data-parallel ranks with Ray Train.

The only module of overfill/ that imports Ray Train; `trainer.train` imports it when `num_workers` > 1.

- **Workers:** a `TorchTrainer` starts N workers, each with a torch process group: gloo on CPU, NCCL with one GPU per
  worker. Each runs `trainer.train_loop` with a `RayWorld`: the decoder wrapped in DDP
  (`ray.train.torch.prepare_model`), the same precision as one process (precision.py), token counts and losses summed with
  `torch.distributed.all_reduce`. Rank r reads slice r of
  every micro-batch (`trainer.batch_for`), so a step sees the same examples as one process with the same global batch.
- **Checkpoints:** rank 0 writes OUTPUT/checkpoint.pt exactly as one process does, and `--resume` reads it. It also
  hands Ray a checkpoint at every save: a directory of the run (OUTPUT/ray-train/checkpoint_STEP) holding a hard link
  to that file (a copy where the filesystem cannot link), reported without upload, only the latest kept. A worker
  group that Ray restarts (`max_failures`), or a run resumed after its driver died, continues from it.
- **Storage:** OUTPUT is Ray's storage path, so on a cluster it must be shared by every node (the PVC of
  deploy/kuberay/train-rayjob.yaml).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, CheckpointUploadMode, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from overfill.default_decoder import resolve_decoder
from overfill.training.trainer import CHECKPOINT, TrainSpec, World, train_loop

RUN_NAME = "ray-train"  # Ray Train's run directory inside OUTPUT
NUM_PROGRESS_LINES = 50  # rank 0 prints about this many progress lines per run


class RayWorld(World):
    """One rank of the data-parallel group that Ray Train set up around this worker."""

    def __init__(self, output: Path, run_dir: Path, steps: int, progress: bool):
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.size = context.get_world_size()
        self._device = ray.train.torch.get_device()
        self._output, self._run_dir = output, run_dir
        self._print_every = max(1, steps // NUM_PROGRESS_LINES) if progress else 0

    def device(self, spec: TrainSpec) -> torch.device:
        return self._device

    def wrap(self, decoder: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(decoder, move_to_device=self._device, parallel_strategy="ddp")

    def no_sync(self, model: torch.nn.Module):
        return model.no_sync()

    def sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device)  # NCCL reduces only CUDA tensors
        dist.all_reduce(tensor)
        return tensor.tolist()

    def resume_state(self, output: Path, resume: bool) -> dict | None:
        checkpoint = ray.train.get_checkpoint()  # set when Ray restarts this run: its latest committed checkpoint
        if checkpoint is None:
            return super().resume_state(output, resume)
        with checkpoint.as_directory() as directory:
            return torch.load(Path(directory) / CHECKPOINT, map_location="cpu", weights_only=False)

    def after_step(self, record: dict, saved: bool) -> None:
        step = record["step"]
        if self.rank == 0 and self._print_every and (step % self._print_every == 0 or saved):
            print(f"step {step}: loss {record['ce']:.4f}, lr {record['lr']:.3g}, "
                  f"{record['num_tokens'] / max(record['seconds'], 1e-9):.0f} response tokens/s", flush=True)
        if not saved:
            return
        # Every rank reports (a report is a barrier); rank 0 attaches the checkpoint it has just written.
        metrics = {k: v for k, v in record.items() if v is not None}
        if self.rank != 0:
            ray.train.report(metrics)
            return
        directory = self._run_dir / f"checkpoint_{step:06d}"
        directory.mkdir(parents=True, exist_ok=True)
        _link_or_copy(self._output / CHECKPOINT, directory / CHECKPOINT)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory),
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link: no second copy of a checkpoint that may weigh tens of GB, and rank 0's next save replaces
    OUTPUT/checkpoint.pt by a rename, which leaves this link on the old file."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _train_worker(config: dict) -> dict:
    """Ray Train's function per worker: the loop of trainer.py as one rank."""
    spec = TrainSpec(**config["spec"])
    world = RayWorld(Path(spec.output), Path(config["run_dir"]), spec.steps, config["progress"])
    return train_loop(spec, world, resume=config["resume"], progress=False, decoder_dir=Path(config["decoder_dir"]))


def _absolute(spec: TrainSpec) -> TrainSpec:
    """Local paths made absolute: Ray workers do not share the driver's working directory. Aliases stay."""
    def absolute(value: str) -> str:
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value
    return replace(spec, model=absolute(spec.model), decoder=absolute(spec.decoder), data=absolute(spec.data),
                   output=str(Path(spec.output).expanduser().resolve()))


def train_on_ray(spec: TrainSpec, resume: bool = False, progress: bool = True, max_failures: int = 0,
                 callbacks: list | None = None) -> dict:
    """Train on `spec.num_workers` Ray Train workers and return rank 0's result (as `trainer.train` does).

    Joins the Ray cluster of RAY_ADDRESS (a RayJob sets it), else starts a local one. `max_failures`: how many times
    Ray may restart the worker group from its latest checkpoint. `callbacks`: `ray.train.UserCallback`s for the
    Ray Train controller (tests use one to keep a mid-run checkpoint).
    """
    if spec.num_workers < 2:
        raise ValueError(f"num_workers must be >= 2 on Ray Train, got {spec.num_workers} (1 trains in process)")
    use_gpu = torch.device(spec.device).type == "cuda"
    if not use_gpu and spec.device != "cpu":
        raise ValueError(f"device must be cpu or cuda with num_workers > 1, got {spec.device!r}")
    spec = _absolute(spec)
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    decoder_dir = resolve_decoder(spec.decoder, spec.model)  # once, here: `default` may build the default decoder
    run_dir = output / RUN_NAME
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: Ray would otherwise hand the workers the old run's checkpoint

    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": asdict(spec), "resume": resume, "progress": progress,
                           "decoder_dir": str(Path(decoder_dir).resolve()), "run_dir": str(run_dir)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(output),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=max_failures), callbacks=callbacks or []),
    )
    result = trainer.fit()
    return result.return_value

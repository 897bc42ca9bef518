"""Data-parallel training on Ray Train (2 CPU workers, gloo) against one process with the same global batch: the same
loss at every step and the same weights; a 2-worker run resumed from its step-2 checkpoint ends bit for bit where the
uninterrupted run ended; the manifest records the run's provenance. One local Ray cluster for the module."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.decoder_checkpoint import read_manifest
from overfill.training.trainer import CHECKPOINT, TrainSpec, batch_for, train
from tests.tiny import CORPUS, save_tiny

# Answers of different lengths, so the two workers' halves of a micro-batch hold different numbers of tokens.
QUESTIONS = ["Name a colour.", "Count to five.", "What is two plus two?", "Say hello.", "Describe a fox.",
             "Spell cat.", "Give a number.", "Finish: the quick brown"]
ANSWERS = ["Blue.", "One, two, three, four, five.", "Two plus two is four.", "Hello there, how are you today?",
           "The quick brown fox is fast and jumps over the lazy dog.", "C, A, T.", "Seven.", "fox jumps over it."]


@pytest.fixture(scope="module")
def ray_cluster():
    """The session's Ray cluster (2 CPUs) when this process has one up already, else one for this module (under
    pytest-xdist, this module runs in the worker that does not run the service modules, tests/conftest.py)."""
    import ray

    from services.app import stop_service
    from tests.service_helpers import session_ray

    started = not ray.is_initialized()
    session_ray()
    yield
    if started:
        stop_service()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny full model, a decoder cut from it, and 8 conversations."""
    root = tmp_path_factory.mktemp("distributed")
    full = save_tiny(root / "tiny-llama")
    calibration = root / "cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    build_decoder(PruneSpec(str(full), 32, 48, output=root / "decoder", calibration=[calibration]), progress=False)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in zip(QUESTIONS, ANSWERS)))
    return root, full, root / "decoder", data


def spec_of(setup, name: str, num_workers: int, batch_size: int) -> TrainSpec:
    root, full, decoder, data = setup
    return TrainSpec(model=str(full), decoder=str(decoder), data=str(data), mode="overfill", output=str(root / name),
                     steps=4, batch_size=batch_size, grad_accum=2, lr=1e-3, kd_weight=0.1, save_every=2,
                     num_workers=num_workers, precision="fp32")  # bf16 rounds a split batch differently


def weights(output: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(output) / "model.safetensors")


def test_the_workers_of_a_micro_batch_read_what_one_process_reads():
    examples = list(range(11))
    one = TrainSpec("m", "d", "x", "overfill", "o", batch_size=4, grad_accum=3, seed=3)
    two = TrainSpec("m", "d", "x", "overfill", "o", batch_size=2, grad_accum=3, seed=3, num_workers=2)
    assert one.global_batch == two.global_batch == 12
    for step in range(5):
        for micro in range(3):
            assert batch_for(step, micro, examples, one) == (batch_for(step, micro, examples, two, rank=0)
                                                             + batch_for(step, micro, examples, two, rank=1))


@pytest.mark.ray_apart
def test_two_workers_match_one_process_and_resume_bit_for_bit(ray_cluster, setup, capsys):
    from ray.train import UserCallback

    from overfill.cli.main import main
    from overfill.training.distributed import RUN_NAME, train_on_ray

    single = train(spec_of(setup, "one-process", num_workers=1, batch_size=4), progress=False)

    kept = setup[0] / "step-2-checkpoint.pt"

    class KeepStep2(UserCallback):
        """On the Ray Train controller: keep a copy of the checkpoint reported at step 2."""
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None and metrics[0]["step"] == 2:
                shutil.copy(Path(checkpoint.path) / CHECKPOINT, kept)

    spec = spec_of(setup, "two-workers", num_workers=2, batch_size=2)
    data_parallel = train_on_ray(spec, progress=False, callbacks=[KeepStep2()])
    # 1) The same loss at every step (a token-weighted mean over both workers), and the same weights.
    one_loss = [h["ce"] for h in single["history"]]
    two_loss = [h["ce"] for h in data_parallel["history"]]
    with capsys.disabled():
        print(f"\nloss per step, 1 process x batch 4: {one_loss}\n"
              f"loss per step, 2 workers x batch 2: {two_loss}")
    assert [h["step"] for h in data_parallel["history"]] == [1, 2, 3, 4]
    assert data_parallel["tokens"] == single["tokens"]
    assert two_loss == pytest.approx(one_loss, rel=1e-5, abs=1e-6)
    a, b = weights(single["output"]), weights(data_parallel["output"])
    assert a.keys() == b.keys()
    weight_gap = max((a[k] - b[k]).abs().max().item() for k in a)
    with capsys.disabled():
        print(f"largest weight difference after 4 steps: {weight_gap:.2e}")
    assert weight_gap < 1e-4

    # 2) Provenance.
    entry = read_manifest(data_parallel["output"]).training[-1]
    root, full, decoder, data = setup
    assert entry["num_workers"] == 2 and entry["global_batch"] == 8 and entry["steps"] == 4
    assert entry["full_model"] == str(full) and 0 < entry["parameter_fraction"] < 1
    assert entry["final_loss"] == two_loss[-1] and len(entry["data_sha256"]) == 64
    assert read_manifest(single["output"]).training[-1]["global_batch"] == 8

    # 3) Resume from the command line: put the step-2 checkpoint back, forget Ray's run, finish again from step 2.
    output = Path(data_parallel["output"])
    assert torch.load(kept, weights_only=False)["step"] == 2
    shutil.copy(kept, output / CHECKPOINT)
    shutil.rmtree(output / RUN_NAME)
    assert main(["train", "--model", str(full), "--decoder", str(decoder), "--data", str(data), "--output", str(output),
                 "--steps", "4", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-3", "--kd-weight", "0.1",
                 "--save-every", "2", "--num-workers", "2", "--precision", "fp32", "--resume"]) == 0
    assert f"final loss {two_loss[-1]:.4f}" in capsys.readouterr().out
    resumed = read_manifest(output).training[-1]
    assert resumed["final_loss"] == two_loss[-1]  # bit for bit, and so are the weights
    assert 0 < resumed["response_tokens_this_run"] < data_parallel["tokens"]  # steps 3 and 4 only
    c = weights(str(output))
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert torch.load(output / CHECKPOINT, weights_only=False)["step"] == 4

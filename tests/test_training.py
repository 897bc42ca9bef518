"""Training: data parsing, the two modes' inputs, a step lowers the loss, resume is exact, provenance is recorded."""

import json

import pytest
import torch

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.decoder_checkpoint import read_manifest
from overfill.training.data import Example, TrainingDataError, load_dataset
from overfill.training.losses import decoder_loss
from overfill.training.trainer import TrainSpec, batch_for, learning_rate_factor, train
from tests.tiny import CORPUS, tiny_model, tiny_tokenizer

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris is the capital."}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Count to three."},
                       {"from": "gpt", "value": "One, two, three."}]},
    {"messages": [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "    return a + b"}]},
    {"messages": [{"role": "user", "content": "Say something."},
                  {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    return path


@pytest.fixture
def decoder_dir(tiny_dir, tmp_path):
    calibration = tmp_path / "cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    build_decoder(PruneSpec(str(tiny_dir), 32, 48, output=tmp_path / "decoder", calibration=[calibration]),
                  progress=False)
    return tmp_path / "decoder"


def test_both_formats_parse_as_at_inference(data_file):
    tokenizer = tiny_tokenizer()
    data = load_dataset(data_file, tokenizer)
    assert len(data.examples) == 4 and data.num_dropped == 0
    first = data.examples[0]
    rendered = tokenizer.apply_chat_template(CONVERSATIONS[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert first.prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert first.response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first.response_ids[:-1]) == "Paris is the capital."
    assert "Be brief." in tokenizer.decode(data.examples[1].prompt_ids)  # ShareGPT system turn kept
    assert load_dataset(data_file, tokenizer, max_length=40).num_dropped == 2


@pytest.mark.parametrize("line, message", [
    ("{not json", "train.jsonl:2: not valid JSON"),
    ('{"prompt": "x"}', "train.jsonl:2: expected"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "train.jsonl:2: no non-empty assistant turn"),
    ('{"conversations": [{"from": "robot", "value": "x"}]}', "train.jsonl:2: every ShareGPT turn"),
])
def test_data_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(CONVERSATIONS[0]) + "\n" + line + "\n")
    with pytest.raises(TrainingDataError, match=message):
        load_dataset(path, tiny_tokenizer())


def test_overfill_mode_never_shows_the_decoder_a_prompt_token():
    full, decoder = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    examples = [Example([300, 301, 302, 303], [10, 11, 12, 2]), Example([304, 305], [13, 14, 2])]
    seen = {"overfill": set(), "pruned": set()}
    for mode in seen:
        handle = decoder.model.embed_tokens.register_forward_hook(
            lambda module, inputs, output, mode=mode: seen[mode].update(inputs[0].flatten().tolist()))
        out = decoder_loss(full, decoder, examples, mode)
        handle.remove()
        assert out.num_tokens == (7 if mode == "pruned" else 5)  # overfill skips r_0: the full model samples it
    assert seen["overfill"] <= {10, 11, 12, 13, 14, 0}  # responses (and padding) only
    assert {300, 301, 302, 303, 304, 305} <= seen["pruned"]


@pytest.mark.parametrize("mode", ["overfill", "pruned"])
def test_a_training_step_lowers_the_loss_on_a_fixed_batch(mode):
    full, decoder = tiny_model("qwen3", seed=0), tiny_model("qwen3", seed=1)
    examples = [Example([5, 6, 7, 8], [20, 21, 22, 23, 24, 2]), Example([9, 10], [30, 31, 32, 2])]
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    before = decoder_loss(full, decoder, examples, mode, kd_weight=0.5)
    before.loss.backward()
    optimizer.step()
    after = decoder_loss(full, decoder, examples, mode, kd_weight=0.5)
    assert after.ce < before.ce and after.kd is not None
    assert all(p.grad is None for p in full.parameters())  # the full model stays frozen


def test_schedule_and_batches_are_pure_functions_of_the_step():
    spec = TrainSpec("m", "d", "x", "overfill", "o", steps=100, batch_size=3, seed=5)
    assert learning_rate_factor(0, spec) == pytest.approx(0.2) and learning_rate_factor(4, spec) == pytest.approx(1.0)
    assert learning_rate_factor(99, spec) == pytest.approx(0.1, abs=0.01)
    examples = [Example([i], [i, 2]) for i in range(7)]
    assert batch_for(3, 0, examples, spec) == batch_for(3, 0, examples, spec)
    epoch = [e for step in range(7) for e in batch_for(step, 0, examples, spec)][:7]
    assert sorted(e.prompt_ids[0] for e in epoch) == list(range(7))  # an epoch visits every example once


def test_resume_is_bit_exact_and_provenance_is_recorded(tiny_dir, decoder_dir, data_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import overfill.training.trainer as trainer

    def spec(output):
        return TrainSpec(model=str(tiny_dir), decoder=str(decoder_dir), data=str(data_file), mode="overfill",
                         output=str(output), steps=4, batch_size=2, lr=1e-3, save_every=2, kd_weight=0.1)

    result = train(spec(tmp_path / "straight"), progress=False)
    assert len(result["history"]) == 4

    # Interrupt a second run during step 3 (after the step-2 checkpoint), then resume it.
    real_loss, calls = trainer.decoder_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "decoder_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(spec(tmp_path / "resumed"), progress=False)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(trainer, "decoder_loss", real_loss)
    resumed = train(spec(tmp_path / "resumed"), resume=True, progress=False)
    assert [h["step"] for h in resumed["history"]] == [3, 4]
    assert [h["ce"] for h in resumed["history"]] == [h["ce"] for h in result["history"][2:]]

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    entry = read_manifest(tmp_path / "straight").training[-1]
    assert entry["mode"] == "overfill" and entry["steps"] == 4 and entry["kd_weight"] == 0.1
    assert read_manifest(tmp_path / "straight").full_model.source == str(tiny_dir)


def test_bf16_training_follows_float32_and_keeps_float32_weights(tiny_dir, decoder_dir, data_file, tmp_path):
    def run(precision):
        return train(TrainSpec(model=str(tiny_dir), decoder=str(decoder_dir), data=str(data_file), mode="overfill",
                               output=str(tmp_path / precision), steps=4, batch_size=2, lr=1e-3, save_every=4,
                               kd_weight=0.1, precision=precision), progress=False)

    fp32, bf16 = run("fp32"), run("bf16")
    assert [h["ce"] for h in bf16["history"]] == pytest.approx([h["ce"] for h in fp32["history"]], rel=0.05)
    assert read_manifest(tmp_path / "bf16").training[-1]["precision"] == "bf16"
    assert read_manifest(tmp_path / "fp32").training[-1]["precision"] == "fp32"
    from safetensors.torch import load_file
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.float32}


def test_precision_auto_takes_bf16_where_the_hardware_has_it(monkeypatch):
    from overfill.training import precision

    assert precision.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert precision.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        assert precision.resolve_precision("auto", torch.device("cpu")) == expected
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        TrainSpec("m", "d", "x", "overfill", "o", precision="fp16")


def test_make_data_then_train_from_the_cli_and_resume_make_data(tiny_dir, decoder_dir, tmp_path, capsys):
    from overfill.cli.main import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in CORPUS))
    data = tmp_path / "data.jsonl"
    common = ["make-data", "--model", str(tiny_dir), "--prompts", str(prompts), "--output", str(data),
              "--max-new-tokens", "6", "--batch-size", "2"]
    assert main(common) == 0
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(lines) == len(CORPUS) and lines[0]["messages"][-1]["role"] == "assistant"
    assert main(common) == 0 and len(data.read_text().splitlines()) == len(CORPUS)  # resumed: nothing left to do
    assert '"written": 0' in capsys.readouterr().out
    # A random tiny model never says EOS: every answer is cut at 6 tokens, marked, and not trained on.
    assert all(line.get("truncated") for line in lines)
    with pytest.raises(TrainingDataError, match=f"no usable examples \\({len(CORPUS)} "):
        load_dataset(data, tiny_tokenizer())

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    out = tmp_path / "trained"
    assert main(["train", "--model", str(tiny_dir), "--decoder", str(decoder_dir), "--data", str(answers),
                 "--mode", "pruned", "--output", str(out), "--steps", "2", "--batch-size", "2"]) == 0
    assert "decoder written to" in capsys.readouterr().out
    assert read_manifest(out).training[-1]["mode"] == "pruned"

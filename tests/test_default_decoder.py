"""The default decoder's build (`make decoder`): prune, then train in overfill mode, resumable, reused once built,
built again when the recipe changes; checked with a tiny model standing in for the embedded one."""

import json

import pytest

import overfill.training.trainer as trainer
from overfill.decoder_checkpoint import read_manifest
from overfill.default_decoder import DefaultDecoderRecipe, default_decoder_dir, ensure_default_decoder, is_built_by
from tests.test_training import CONVERSATIONS
from tests.tiny import CORPUS


@pytest.fixture
def recipe(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERFILL_HOME", str(tmp_path / "home"))
    data, calibration = tmp_path / "train.jsonl", tmp_path / "cal.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    return DefaultDecoderRecipe(model=str(tiny_dir), data=str(data), calibration=str(calibration), hidden_size=32,
                                intermediate_size=48, steps=4, batch_size=2, lr=1e-3)


def test_build_prunes_trains_and_is_reused(recipe):
    path = ensure_default_decoder(progress=False, recipe=recipe)
    assert path == default_decoder_dir() and is_built_by(path, recipe)
    manifest = read_manifest(path)
    assert (manifest.hidden_size, manifest.intermediate_size) == (32, 48)
    assert [(t["mode"], t["steps"]) for t in manifest.training] == [("overfill", 4)]
    assert not (path / "checkpoint.pt").exists() and not path.with_name(path.name + ".build").exists()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_decoder(progress=False, recipe=recipe) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    # Another recipe (e.g. an older untrained default, or more steps) is not this one: it is built again.
    assert not is_built_by(path, DefaultDecoderRecipe(hidden_size=32, intermediate_size=48, steps=5, lr=1e-3))


def test_an_interrupted_build_resumes_its_training(recipe, monkeypatch):
    real_loss, calls = trainer.decoder_loss, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "decoder_loss", counted)
    recipe = DefaultDecoderRecipe(**{**recipe.__dict__, "steps": 4, "save_every": 1})
    interrupt = True
    with pytest.raises(KeyboardInterrupt):  # during step 3, after the step-2 checkpoint
        ensure_default_decoder(progress=False, recipe=recipe)
    build = default_decoder_dir().with_name(default_decoder_dir().name + ".build")
    assert (build / "pruned" / "overfill.json").is_file() and not is_built_by(default_decoder_dir(), recipe)
    interrupt = False
    path = ensure_default_decoder(progress=False, recipe=recipe)
    assert is_built_by(path, recipe) and len(calls) == 3 + 2  # steps 3 and 4 only: 1 and 2 were not trained again

"""Decoder recipes and the default decoder's build (`make decoder`): prune and reconstruct, then train in overfill
mode, resumable, reused once built, built again when the recipe changes; checked with a tiny model standing in for
the embedded one. Widths for a parameter fraction."""

import json

import pytest

import overfill.training.trainer as trainer
from overfill.decoder_checkpoint import read_manifest
from overfill.decoder_recipe import DecoderRecipe, count_parameters, is_built_by, recipe_for_fraction
from overfill.default_decoder import default_decoder_dir, ensure_default_decoder
from tests.test_training import CONVERSATIONS
from tests.tiny import CORPUS, tiny_config


@pytest.fixture
def recipe(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERFILL_HOME", str(tmp_path / "home"))
    data, calibration = tmp_path / "train.jsonl", tmp_path / "cal.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    return DecoderRecipe(model=str(tiny_dir), data=str(data), calibration=(str(calibration),), hidden_size=32,
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
    assert manifest.recipe == recipe.identity and manifest.reconstruction["method"] == "lstsq"
    assert not is_built_by(path, DecoderRecipe(**{**recipe.__dict__, "steps": 5}))
    assert not is_built_by(path, DecoderRecipe(**{**recipe.__dict__, "reconstruct": "none"}))
    assert is_built_by(path, DecoderRecipe(**{**recipe.__dict__, "save_every": 7}))  # how often it saved: the same


def test_an_interrupted_build_resumes_its_training(recipe, monkeypatch):
    real_loss, calls = trainer.decoder_loss, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "decoder_loss", counted)
    recipe = DecoderRecipe(**{**recipe.__dict__, "steps": 4, "save_every": 1})
    interrupt = True
    with pytest.raises(KeyboardInterrupt):  # during step 3, after the step-2 checkpoint
        ensure_default_decoder(progress=False, recipe=recipe)
    build = default_decoder_dir().with_name(default_decoder_dir().name + ".build")
    assert (build / "pruned" / "overfill.json").is_file() and not is_built_by(default_decoder_dir(), recipe)
    interrupt = False
    path = ensure_default_decoder(progress=False, recipe=recipe)
    assert is_built_by(path, recipe) and len(calls) == 3 + 2  # steps 3 and 4 only: 1 and 2 were not trained again


def test_widths_for_a_fraction_cut_the_mlp_first_then_the_residual_width():
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3, head_dim=8,
                         intermediate_size=192, num_hidden_layers=4)
    full = count_parameters(config, 72, 192)
    previous = None
    for fraction in (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4):
        recipe = recipe_for_fraction(config, fraction)
        size = count_parameters(config, recipe.hidden_size, recipe.intermediate_size)
        assert size <= fraction * full and recipe.hidden_size % 9 == 0
        assert count_parameters(config, recipe.hidden_size, recipe.intermediate_size + 1) > fraction * full  # widest
        if previous is not None:
            assert recipe.hidden_size <= previous.hidden_size
        previous = recipe
    assert recipe_for_fraction(config, 0.95).hidden_size == 72  # a mild cut: the MLP alone
    assert recipe_for_fraction(config, 0.4).hidden_size < 72
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        recipe_for_fraction(config, 0)

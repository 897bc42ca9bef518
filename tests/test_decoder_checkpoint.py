"""Decoder directories: prune -> save -> load round trip, and refusal of a decoder of another full model."""

import json

import pytest
import torch

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.decoder_checkpoint import DecoderMismatchError, read_manifest
from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams
from overfill.geometry import GeometryMismatchError
from tests.tiny import CORPUS, save_tiny


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    return path


def prune(full_dir, output, calibration_file, hidden=48, intermediate=40):
    return build_decoder(PruneSpec(model=str(full_dir), hidden_size=hidden, intermediate_size=intermediate,
                                   output=output, calibration=[calibration_file]), progress=False)


def test_save_load_round_trip(tiny_dir, tmp_path, calibration_file):
    manifest = prune(tiny_dir, tmp_path / "decoder", calibration_file)
    loaded_manifest = read_manifest(tmp_path / "decoder")
    assert loaded_manifest == manifest
    assert manifest.full_model.source == str(tiny_dir)
    assert len(manifest.kept_hidden) == 48 and all(len(row) == 40 for row in manifest.kept_mlp)
    assert manifest.calibration["num_samples"] == len(CORPUS) and manifest.calibration["num_tokens"] > 0
    assert (tmp_path / "decoder" / "config.json").is_file() and (tmp_path / "decoder" / "tokenizer.json").is_file()

    # The saved decoder is a plain Hugging Face checkpoint.
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "decoder")
    assert plain.config.hidden_size == 48 and plain.config.head_dim == 16

    loaded = load_engine(str(tiny_dir), str(tmp_path / "decoder"), ["overfill", "full", "pruned"])
    prompt = loaded.tokenizer("What is the capital?")["input_ids"]
    params = SamplingParams(max_new_tokens=6)
    outputs = {mode: loaded.engine.generate([prompt], params, mode)[0].token_ids for mode in ("overfill", "full", "pruned")}
    assert outputs["overfill"][0] == outputs["full"][0]  # the full model samples the first token
    # The loaded decoder computes what the saved one did.
    ids = torch.tensor([prompt])
    cache = loaded.engine.new_cache(1, 32)
    torch.testing.assert_close(loaded.engine.decoder.forward(cache, cache.allocate(1), ids, all_logits=True),
                               plain(ids).logits, rtol=1e-4, atol=1e-4)


def test_decoder_of_other_weights_is_refused(tiny_dir, tmp_path, calibration_file):
    prune(tiny_dir, tmp_path / "decoder", calibration_file)
    other = save_tiny(tmp_path / "other", seed=1)  # same architecture, other weights
    with pytest.raises(DecoderMismatchError, match="same architecture but other weights"):
        load_engine(str(other), str(tmp_path / "decoder"), ["overfill"])


def test_decoder_of_other_geometry_is_refused_before_loading(tiny_dir, tmp_path, calibration_file):
    prune(tiny_dir, tmp_path / "decoder", calibration_file)
    other = save_tiny(tmp_path / "other", num_key_value_heads=4)
    with pytest.raises(GeometryMismatchError) as error:
        load_engine(str(other), str(tmp_path / "decoder"), ["pruned"])
    assert "full model: layers=3 q_heads=4 kv_heads=4" in str(error.value)
    assert "decoder:    layers=3 q_heads=4 kv_heads=2" in str(error.value)


def test_directory_without_manifest_is_refused(tiny_dir, tmp_path):
    with pytest.raises(DecoderMismatchError, match="no overfill.json"):
        load_engine(str(tiny_dir), str(tiny_dir), ["overfill"])


def test_overfill_mode_needs_a_decoder(tiny_dir):
    with pytest.raises(ValueError, match="needs --decoder"):
        load_engine(str(tiny_dir), None, ["overfill"])

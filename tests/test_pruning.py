"""Calibration and width pruning: the identity invariant, slicing, padding masking, size checks, refusals.
(Reconstruction: tests/test_reconstruction.py.)"""

import json

import pytest
import torch

from overfill.calibration import CalibrationDataError, CalibrationSample, estimate_importance, load_calibration
from overfill.engine.generate import TwoStageEngine
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.geometry import KVGeometry
from overfill.model_loading import UnsupportedModelError, check_supported
from overfill.pruning import KeptChannels, PruneSizeError, check_sizes, prune_model, select_hidden
from tests.tiny import tiny_decoder, tiny_model, tiny_samples, tiny_tokenizer


def importance_of(model, batch_size=2):
    return estimate_importance(model, tiny_samples(), pad_id=0, batch_size=batch_size, progress=False)


def top_channels(model, hidden_size: int, intermediate_size: int) -> KeptChannels:
    """Residual channels by importance; the first `intermediate_size` MLP channels of every layer."""
    return KeptChannels(hidden=select_hidden(importance_of(model), hidden_size),
                        mlp=[list(range(intermediate_size))] * model.config.num_hidden_layers)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_identity_prune_keeps_logits_and_overfill_equals_full(arch):
    full = tiny_model(arch)
    config = full.config
    decoder = tiny_decoder(full, config.hidden_size, config.intermediate_size, method="lstsq")
    input_ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decoder(input_ids).logits, full(input_ids).logits, rtol=0, atol=0)

    engine = TwoStageEngine(ModelRunner(full), ModelRunner(decoder), eos_token_ids=set())
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    params = SamplingParams(max_new_tokens=12)
    overfill = [o.token_ids for o in engine.generate(prompts, params, "overfill")]
    assert overfill == [o.token_ids for o in engine.generate(prompts, params, "full")]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_pruned_shapes_keep_kv_geometry(arch):
    full = tiny_model(arch)
    kept = top_channels(full, 48, 40)
    decoder = prune_model(full, kept)
    assert (decoder.config.hidden_size, decoder.config.intermediate_size) == (48, 40)
    assert decoder.config.head_dim == 16
    assert KVGeometry.from_config(decoder.config) == KVGeometry.from_config(full.config)
    m, mi = torch.tensor(kept.hidden), torch.tensor(kept.mlp[1])
    layer, full_layer = decoder.model.layers[1], full.model.layers[1]
    assert torch.equal(layer.self_attn.k_proj.weight, full_layer.self_attn.k_proj.weight[:, m])
    assert torch.equal(layer.self_attn.o_proj.weight, full_layer.self_attn.o_proj.weight[m, :])
    assert torch.equal(layer.mlp.down_proj.weight, full_layer.mlp.down_proj.weight[m][:, mi])
    assert torch.equal(layer.mlp.up_proj.weight, full_layer.mlp.up_proj.weight[mi][:, m])
    assert torch.equal(decoder.model.norm.weight, full.model.norm.weight[m])
    assert torch.equal(decoder.lm_head.weight, full.lm_head.weight[:, m])
    if full.config.tie_word_embeddings:
        assert decoder.lm_head.weight is decoder.model.embed_tokens.weight
    if arch == "qwen2":
        assert torch.equal(layer.self_attn.q_proj.bias, full_layer.self_attn.q_proj.bias)
    # It runs, and on the full model's KV: overfill mode decodes with it.
    engine = TwoStageEngine(ModelRunner(full), ModelRunner(decoder), eos_token_ids=set())
    out = engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4), "overfill")[0]
    assert len(out.token_ids) == 4


def test_kept_channels_are_the_most_important_in_order():
    full = tiny_model("llama")
    importance = importance_of(full)
    hidden = select_hidden(importance, 16)
    assert hidden == sorted(hidden) and len(hidden) == 16
    threshold = importance.hidden[hidden].min()
    dropped = [i for i in range(64) if i not in hidden]
    assert importance.hidden[dropped].max() <= threshold


def test_padding_is_masked_out_of_importance():
    full = tiny_model("qwen3")
    one_by_one = importance_of(full, batch_size=1)
    padded = importance_of(full, batch_size=5)  # samples of different lengths share a padded batch
    torch.testing.assert_close(padded.hidden, one_by_one.hidden, rtol=1e-4, atol=1e-5)
    assert padded.num_tokens == one_by_one.num_tokens


def test_sizes_refused_name_the_nearest_accepted():
    config = tiny_model("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3, head_dim=8).config
    with pytest.raises(PruneSizeError, match="nearest accepted: 36 or 45"):
        check_sizes(config, 40, 48)
    with pytest.raises(PruneSizeError, match=r"intermediate_size must be in \[1, 96\]"):
        check_sizes(config, 36, 97)
    check_sizes(config, 36, 48)


def test_kept_mlp_counts_must_agree():
    full = tiny_model("llama")
    with pytest.raises(ValueError, match="same count"):
        prune_model(full, KeptChannels(hidden=list(range(64)), mlp=[list(range(10)), list(range(9)), list(range(10))]))


def test_calibration_samples_split_where_overfill_splits_and_errors_name_the_line(tmp_path):
    tokenizer = tiny_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    good = tmp_path / "cal.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Paris is the capital."}]
    good.write_text('{"text": "The quick brown fox jumps."}\n\n' + json.dumps({"messages": chat}) + "\n"
                    + json.dumps({"messages": chat[:1]}) + "\n")
    calibration = load_calibration([good], tokenizer)
    text_ids = encode("The quick brown fox jumps.")
    prompt = encode(tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True))
    rendered_user = encode(tokenizer.apply_chat_template(chat[:1], tokenize=False))
    assert calibration.samples == [
        CalibrationSample(text_ids, len(text_ids) // 2),  # a text: its first half is prompt
        CalibrationSample(prompt + encode("Paris is the capital.") + [tokenizer.eos_token_id], len(prompt)),
        CalibrationSample(rendered_user, len(rendered_user) // 2),  # no assistant turn to split at
    ]
    assert load_calibration([good], tokenizer, max_length=4).samples[1] == CalibrationSample(prompt[:4], 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "wrong key"}\n')
    with pytest.raises(CalibrationDataError, match="bad.jsonl:2"):
        load_calibration([good, bad], tokenizer)


def test_shipped_calibration_set_has_a_few_hundred_samples():
    calibration = load_calibration(None, tiny_tokenizer())
    assert len(calibration.samples) >= 200


@pytest.mark.parametrize("model_type, overrides, reason", [
    ("gemma", {}, "Gemma"), ("qwen2_moe", {"num_experts": 8}, "mixture-of-experts"), ("gpt2", {}, "not supported"),
])
def test_unsupported_architectures_are_refused_with_a_reason(model_type, overrides, reason):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **overrides)
    with pytest.raises(UnsupportedModelError, match=reason):
        check_supported(config)


def test_qwen_sliding_window_and_dynamic_rope_are_refused():
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        check_supported(tiny_model("qwen2", use_sliding_window=True, sliding_window=8).config)
    config = tiny_model("llama").config
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        check_supported(config)


def test_prefill_refresh_replaces_decoder_kv_with_the_full_models():
    full = tiny_model("llama")
    decoder = tiny_decoder(full, 32, 48)
    engine = TwoStageEngine(ModelRunner(full), ModelRunner(decoder), eos_token_ids=set())
    prompt = [3, 1, 4, 1, 5]
    cache = engine.new_cache(1, 32)
    out = engine.generate([prompt], SamplingParams(max_new_tokens=8), "overfill", cache=cache, refresh_every=3)
    # Decode steps 1-7 wrote tokens 0-6 at positions 5-11; the refreshes after steps 3 and 6 rewrote positions 5-10
    # with the full model's KV (position 11, written by step 7, was not refreshed: generation ended).
    sequence = prompt + out[0].token_ids[:6]
    reference = engine.new_cache(1, 32)
    engine.full.forward(reference, reference.allocate(1), torch.tensor([sequence]))
    n = len(sequence)
    torch.testing.assert_close(cache.k[:, 0, :, :n], reference.k[:, 0, :, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v[:, 0, :, :n], reference.v[:, 0, :, :n], rtol=1e-5, atol=1e-5)
    plain_cache = engine.new_cache(1, 32)
    engine.generate([prompt], SamplingParams(max_new_tokens=8), "overfill", cache=plain_cache)
    assert not torch.allclose(plain_cache.k[:, 0, :, n - 1], reference.k[:, 0, :, n - 1])  # without: decoder KV
    with pytest.raises(ValueError, match="only meaningful in overfill"):
        engine.generate([prompt], SamplingParams(max_new_tokens=2), "full", refresh_every=2)

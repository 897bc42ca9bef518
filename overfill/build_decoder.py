"""`overfill prune`: calibrate the full model, pick channels, cut the decoder and save it with its manifest.

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
from overfill.pruning import check_sizes, num_parameters, prune_model, select_channels

log = logging.getLogger(__name__)


@dataclass
class PruneSpec:
    model: str
    hidden_size: int
    intermediate_size: int
    output: Path
    calibration: Path | None = None   # None: the shipped calibration set
    num_samples: int | None = None    # None: every sample in the file
    batch_size: int = 8
    max_length: int = 512
    device: str = "cpu"


def build_decoder(spec: PruneSpec, progress: bool = True) -> DecoderManifest:
    # 1) The full model, and the sizes checked before any expensive work.
    full = load_model(spec.model, dtype="float32", device=spec.device)
    check_sizes(full.model.config, spec.hidden_size, spec.intermediate_size)

    # 2) Channel importance on the calibration set.
    calibration = load_calibration(spec.calibration, full.tokenizer, spec.num_samples)
    importance = estimate_importance(full.model, full.tokenizer, calibration.texts, spec.batch_size,
                                     spec.max_length, progress=progress)

    # 3) Keep the most important channels and cut the decoder.
    kept = select_channels(importance, spec.hidden_size, spec.intermediate_size)
    decoder = prune_model(full.model, kept)

    # 4) Save it with its manifest, atomically.
    manifest = DecoderManifest(
        full_model=FullModelRef.of(full.model, spec.model),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_parameters=num_parameters(decoder),
        kept_hidden=kept.hidden,
        kept_mlp=kept.mlp,
        calibration={
            "source": calibration.source,
            "sha256": calibration.sha256,
            "num_samples": importance.num_samples,
            "num_tokens": importance.num_tokens,
            "max_length": spec.max_length,
        },
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

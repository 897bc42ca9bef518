"""A decoder cut from another full model is refused when the service starts, naming both models: by the driver
before anything is deployed (another architecture or KV geometry), and by each prefill replica once it has loaded
the full model's weights (the same architecture with other weights)."""

import json

import pytest

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.decoder_checkpoint import DecoderMismatchError
from overfill.serving.config import ConfigError, load_config
from tests.tiny import CORPUS, save_tiny


def cut_decoder(full_dir, output):
    calibration = output.parent / f"{output.name}-cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    build_decoder(PruneSpec(str(full_dir), 48, 64, output=output, calibration=[calibration], reconstruct="none"),
                  progress=False)
    return output


def test_a_decoder_of_another_architecture_is_refused_before_anything_is_deployed(tmp_path, monkeypatch):
    import services.app

    full = save_tiny(tmp_path / "full-llama", arch="llama")
    foreign = cut_decoder(save_tiny(tmp_path / "full-qwen3", arch="qwen3"), tmp_path / "decoder-of-qwen3")
    monkeypatch.setattr(services.app, "start_ray", lambda *a, **k: pytest.fail("Ray started for a refused config"))
    config = load_config(None, [f"models.full={full}", f"models.decoder={foreign}"])
    with pytest.raises(ConfigError, match=rf"models.decoder '{foreign}' does not fit models.full '{full}': "):
        services.app.start_service(config)


def test_a_prefill_replica_refuses_a_decoder_cut_from_other_weights(tmp_path):
    from services.prefill.server import PrefillServer

    full = save_tiny(tmp_path / "full", arch="llama", seed=0)
    sibling = cut_decoder(save_tiny(tmp_path / "sibling", arch="llama", seed=1), tmp_path / "decoder-of-sibling")
    own = cut_decoder(full, tmp_path / "own-decoder")
    config = load_config(None, [f"models.full={full}", f"models.decoder={sibling}"]).with_secret()
    with pytest.raises(DecoderMismatchError, match="same architecture but other weights"):
        PrefillServer(config)
    config = load_config(None, [f"models.full={full}", f"models.decoder={own}"]).with_secret()
    prefill = PrefillServer(config)
    prefill.worker.close(), prefill.sender.close()

"""One short check on the embedded SmolLM2-135M: prune to about half, generate 16 tokens in each mode."""

import pytest

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams
from overfill.model_loading import EMBEDDED_ALIAS
from overfill.prompts import encode_prompt

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def half_decoder(tmp_path_factory):
    output = tmp_path_factory.mktemp("real") / "decoder"
    manifest = build_decoder(PruneSpec(EMBEDDED_ALIAS, hidden_size=360, intermediate_size=1024, output=output,
                                       num_samples=16), progress=False)
    return output, manifest


def test_embedded_model_prunes_to_half_and_generates_in_every_mode(half_decoder):
    decoder_dir, manifest = half_decoder
    assert 0.45 < manifest.parameter_fraction < 0.55
    loaded = load_engine(EMBEDDED_ALIAS, str(decoder_dir), ["overfill", "full", "pruned"])
    prompt = encode_prompt(loaded.tokenizer, "What is the capital of France?")
    params = SamplingParams(max_new_tokens=16)
    outputs = {mode: loaded.engine.generate([prompt], params, mode)[0] for mode in ("full", "overfill", "pruned")}

    full_text = loaded.tokenizer.decode(outputs["full"].token_ids, skip_special_tokens=True)
    assert "Paris" in full_text
    assert outputs["overfill"].token_ids[0] == outputs["full"].token_ids[0]  # first token from the full model
    for output in outputs.values():
        assert 1 <= len(output.token_ids) <= 16
    assert len(outputs["overfill"].token_ids) == 16 or outputs["overfill"].finish_reason == "stop"

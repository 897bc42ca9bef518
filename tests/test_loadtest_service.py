"""`overfill loadtest` against the real service on a local Ray cluster with tiny models: ten requests, prompts of
exact token lengths from the served model's own tokenizer, replicas per pool read from Health, and no KV left."""

import glob
import json

import pytest

from overfill.cli.main import main
from tests.service_helpers import assert_no_kv_left, build_tiny_models, tiny_service_config

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from services.app import start_service, stop_service

    full_dir, decoder_dir = build_tiny_models(tmp_path_factory.mktemp("loadtest-service"))
    config = start_service(tiny_service_config(full_dir, decoder_dir), ray_init_kwargs={"num_cpus": 2})
    yield {"address": f"127.0.0.1:{config.server.grpc_port}", "config": config, "full_dir": full_dir}
    stop_service()


def test_loadtest_against_the_local_service(service, tmp_path, capsys):
    assert main(["loadtest", "--target", service["address"], "--num-prompts", "10", "--request-rate", "20",
                 "--max-concurrency", "4", "--random-input-len", "16", "--random-output-len", "8",
                 "--num-warmups", "1", "--goodput", "ttft:60000", "--save-result", "--save-detailed",
                 "--result-dir", str(tmp_path), "--disable-tqdm"]) == 0
    assert "Successful requests:                     10" in capsys.readouterr().out
    (path,) = glob.glob(f"{tmp_path}/*.json")
    result = json.loads(open(path).read())
    assert result["completed"] == 10 and result["failed"] == 0 and result["errors_by_code"] == {}
    # The served model's tokenizer (found through GetModelInfo) makes prompts of exactly 16 tokens, as the service
    # counts them.
    assert result["token_source"] == "tokenizer" and result["tokenizer_id"] == str(service["full_dir"])
    assert result["input_lens"] == [16] * 10 and result["total_input_tokens"] == 160
    assert all(1 <= n <= 8 for n in result["output_lens"])
    assert result["total_output_tokens"] == sum(result["output_lens"])
    assert all(t > 0 for t in result["ttfts"]) and result["mean_e2el_ms"] >= result["mean_ttft_ms"] > 0
    assert result["slo_attainment_pct"] == 100.0
    replicas = [s["replicas"] for s in result["time_series"] if s["replicas"]]
    assert replicas and all(r["prefill"] >= 1 and r["decode"] >= 1 for r in replicas)
    assert_no_kv_left(service["config"])

"""`overfill bench service --compare-decoder`: its baseline decoder, the fixed-size deploy file, CPU accounting and
the report (the runs themselves start the service twice: `overfill bench service --compare-decoder full`)."""

import os
import time
from pathlib import Path

import pytest
import yaml

from loadtest.service_watch import cpu_seconds_by_role as cpu_seconds
from overfill.bench.service_compare import (ROLES, fixed_size_serve_file, format_report, identity_decoder, plot,
                                            summarize)
from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_the_identity_decoder_decodes_as_the_full_model(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERFILL_HOME", str(tmp_path / "home"))
    decoder = identity_decoder(str(tiny_dir))
    assert identity_decoder(str(tiny_dir)) == decoder  # built once
    loaded = load_engine(str(tiny_dir), str(decoder), ["full", "overfill"])
    params = SamplingParams(max_new_tokens=12)
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    assert ([o.token_ids for o in loaded.engine.generate(prompts, params, "overfill")]
            == [o.token_ids for o in loaded.engine.generate(prompts, params, "full")])


def test_both_runs_decode_on_a_fixed_number_of_replicas():
    serve_file = yaml.safe_load((DEPLOY / "local.yaml").read_text())
    assert any("autoscaling_config" in d for d in serve_file["applications"][0]["deployments"])
    fixed = fixed_size_serve_file(serve_file)
    assert not any("autoscaling_config" in d for d in fixed["applications"][0]["deployments"])
    assert any("autoscaling_config" in d for d in serve_file["applications"][0]["deployments"])  # a copy
    assert fixed_size_serve_file(None) is None


def test_cpu_seconds_count_a_process_and_its_threads():
    before = cpu_seconds({"router": [os.getpid()]})["router"]
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert cpu_seconds({"router": [os.getpid()]})["router"] - before >= 0.15
    assert cpu_seconds({"decode": [2 ** 22 + 12345]}) == {"decode": 0.0}  # a process gone counts nothing


def run(name: str, tokens_per_s: float, router_ms: float) -> dict:
    cpu = {role: 1.0 for role in ROLES} | {"router": router_ms}
    return {"name": name, "decoder": f"/decoders/{name}", "completed": 48, "failed": 0, "output_tokens": 4608,
            "duration_s": 4608 / tokens_per_s, "output_tokens_per_s": tokens_per_s, "mean_tpot_ms": 1e3 / tokens_per_s,
            "p99_tpot_ms": 2e3 / tokens_per_s, "mean_ttft_ms": 500.0, "p99_ttft_ms": 900.0, "mean_itl_ms": 80.0,
            "goodput_req_s": 0.5, "cpu_ms_per_token": cpu, "router_plus_proxy_cpu_ms_per_token": router_ms + 1.0,
            "num_processes": {role: 1 for role in ROLES}}


def test_the_report_puts_every_run_and_the_means_side_by_side(tmp_path):
    runs = [run("decoder", 120.0, 1.0), run("baseline", 100.0, 1.2), run("baseline", 90.0, 1.4),
            run("decoder", 110.0, 1.2)]
    mean = {name: summarize([r for r in runs if r["name"] == name]) for name in ("decoder", "baseline")}
    assert mean["decoder"]["output_tokens_per_s"] == 115.0 and mean["baseline"]["cpu_ms_per_token"]["router"] == pytest.approx(1.3)
    result = {"spec": {"compare_decoder": "full", "concurrency": 12, "num_prompts": 48, "input_len": 128,
                       "output_len": 96, "tpot_slo_ms": 100.0, "rounds": 2},
              "model": "tiny", "runs": runs, "mean": mean,
              "in_process_tokens_per_s": {"decoder": 130.0, "baseline": 100.0},
              "service_ratio": 115.0 / 95.0, "in_process_ratio": 1.3}
    report = format_report(result)
    assert "decoder #1" in report and "baseline #3" in report and "**decoder mean**" in report
    assert "service 1.211x, in process (batch 12, overfill mode) 1.300x" in report
    plot(result, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 10_000

"""The service end to end on a local Ray cluster with tiny models: gRPC API, routing, KV pulled over gRPC,
cancellation, lease expiry, error statuses, Prometheus metrics, and `overfill loadtest` against it. One application
for the module."""

import glob
import json
import time

import pytest
import torch

from overfill.client import OverFillClient, OverFillError
from overfill.engine.sampling import SamplingParams
from tests.service_helpers import assert_no_kv_left as assert_no_kv_left_in
from tests.faults.replicas import exported_replicas, metric, scrape
from tests.test_dashboard import metrics_read_by_the_vllm_rules
from tests.service_helpers import (EIGHT_PROMPTS, concurrent_greedy, in_process, session_ray, tiny_service,
                                   tiny_service_config, wait_for)

pytestmark = pytest.mark.service
LEASE_TTL_S = 3.0


@pytest.fixture(scope="module")
def service(service_models):
    from ray import serve

    session_ray()
    # The session's cluster may export the metrics of earlier modules' replicas: this module looks at its own only.
    earlier = exported_replicas(tiny_service_config(*service_models))
    with tiny_service(service_models, f"kv.lease_ttl_s={LEASE_TTL_S}") as service:
        app = service["config"].server.app_name
        yield {**service, "earlier_replicas": earlier,
               "handles": {pool: serve.get_deployment_handle(pool, app) for pool in ("prefill", "decode")}}


def stats(service, pool):
    return service["handles"][pool].stats.remote().result()


def assert_no_kv_left(service):
    assert_no_kv_left_in(service["config"])


def test_greedy_through_the_service_equals_in_process(service):
    with OverFillClient(service["address"]) as client:
        for prompt in ["What is the capital of France?", "one two three"]:
            pieces = list(client.generate(prompt, max_tokens=20))
            token_ids = [t for p in pieces for t in p.token_ids]
            assert token_ids == in_process(service, prompt, 20)
            last = pieces[-1]
            assert last.finish_reason in ("stop", "length") and all(not p.finish_reason for p in pieces[:-1])
            assert last.usage.completion_tokens == len(token_ids) and last.usage.prompt_tokens > 0
            assert 0 < last.usage.ttft_s <= last.usage.e2e_s
            text = "".join(p.text for p in pieces)
            assert text == service["engine"].tokenizer.decode(token_ids, skip_special_tokens=True)
        unary = client.generate_unary("one two three", max_tokens=20)
        assert list(unary.token_ids) == in_process(service, "one two three", 20)
    assert_no_kv_left(service)


def test_token_ids_in_stop_token_ids_and_ignore_eos_through_the_service(service):
    """A prompt sent as its token ids decodes as the text does; a stop token id ends the request on that token, in
    the prefill pool (the first token) or the decode pool (a later one); ignore_eos runs to max_tokens."""
    prompt = "one two three"
    expected = in_process(service, prompt, 20)
    prompt_ids = service["engine"].tokenizer(prompt)["input_ids"]
    with OverFillClient(service["address"]) as client:
        assert list(client.generate_unary(prompt_token_ids=prompt_ids, max_tokens=20).token_ids) == expected
        for stop in (expected[0], expected[3]):
            unary = client.generate_unary(prompt, max_tokens=20, stop_token_ids=[stop])
            assert list(unary.token_ids) == expected[:expected.index(stop) + 1] and unary.finish_reason == "stop"
        unary = client.generate_unary(prompt, max_tokens=20, ignore_eos=True)
        assert len(unary.token_ids) == 20 and unary.finish_reason == "length"
        assert list(unary.token_ids)[:len(expected)] == expected
    assert_no_kv_left(service)


def test_eight_concurrent_streams_complete_correctly(service):
    outputs = concurrent_greedy(service["address"], EIGHT_PROMPTS, 24)
    assert outputs == [in_process(service, p, 24) for p in EIGHT_PROMPTS]
    assert_no_kv_left(service)


def test_cancelled_stream_frees_kv_on_both_sides(service):
    with OverFillClient(service["address"]) as client:
        stream = client.generate("count with me: one two three", max_tokens=64, temperature=1.0, seed=1)
        next(stream)
        next(stream)
        stream.close()  # the client goes away mid-stream
    assert_no_kv_left(service)


def test_stop_strings_end_the_request_and_free_its_kv(service):
    reference = service["engine"].tokenizer.decode(in_process(service, "one two three", 30), skip_special_tokens=True)
    stop = reference[len(reference) // 2: len(reference) // 2 + 2]
    with OverFillClient(service["address"]) as client:
        pieces = list(client.generate("one two three", max_tokens=30, stop=[stop]))
    text = "".join(p.text for p in pieces)
    assert pieces[-1].finish_reason == "stop" and text == reference[:reference.find(stop)]
    assert_no_kv_left(service)


def test_unclaimed_lease_expires_and_frees_kv(service):
    from overfill.serving.types import PrefillRequest

    expired_before = stats(service, "prefill")["leases_expired"]
    ticket = service["handles"]["prefill"].prefill.remote(
        PrefillRequest("orphan-1", [5, 6, 7, 8], SamplingParams(max_new_tokens=8))).result()
    assert ticket.ticket is not None and stats(service, "prefill")["num_leases"] == 1
    assert wait_for(lambda: stats(service, "prefill")["num_leases"] == 0, timeout_s=LEASE_TTL_S + 5)
    assert stats(service, "prefill")["leases_expired"] == expired_before + 1


@pytest.mark.parametrize("kwargs, code, field", [
    (dict(prompt=""), "INVALID_ARGUMENT", "prompt is empty"),
    (dict(prompt="hi", max_tokens=65), "INVALID_ARGUMENT", "max_tokens"),
    (dict(prompt="hi", temperature=-1.0), "INVALID_ARGUMENT", "temperature"),
    (dict(prompt="hi", top_p=1.5), "INVALID_ARGUMENT", "top_p"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "INVALID_ARGUMENT", "chat.messages[0].role"),
    (dict(prompt="word " * 250, max_tokens=64), "RESOURCE_EXHAUSTED", "exceeds the context"),
])
def test_bad_input_gets_its_status_and_the_service_keeps_serving(service, kwargs, code, field):
    with OverFillClient(service["address"]) as client:
        with pytest.raises(OverFillError) as error:
            list(client.generate(**kwargs))
        assert error.value.code == code and field in error.value.message
        assert len(client.generate_unary("still alive?", max_tokens=3).token_ids) >= 1


def test_health_and_model_info(service):
    with OverFillClient(service["address"]) as client:
        assert client.health() == "SERVING"
        assert dict(client.health_report().replicas) == {"router": 1, "prefill": 1, "decode": 1}
        info = client.model_info()
    assert info.full_hidden_size == 64 and info.decoder_hidden_size == 48
    assert info.geometry.num_layers == 3 and info.geometry.num_kv_heads == 2 and info.max_tokens_limit == 64


def test_cli_client_streams_and_reports_errors(service, capsys):
    from overfill.cli.main import main

    assert main(["client", "--address", service["address"], "--raw", "--max-tokens", "6", "--json", "one two"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[-1]["finish_reason"] in ("stop", "length") and "usage" in lines[-1]
    assert [t for line in lines for t in line.get("token_ids", [])] == in_process(service, "one two", 6)
    assert main(["client", "--address", service["address"], "--raw", "--max-tokens", "999", "hi"]) == 1
    assert "INVALID_ARGUMENT: max_tokens" in capsys.readouterr().err


def test_deadline_is_honoured_and_frees_kv(service):
    with OverFillClient(service["address"], timeout_s=0.3) as client:
        with pytest.raises(OverFillError) as error:
            for _ in client.generate("a long answer please", max_tokens=64, temperature=1.0, seed=3):
                time.sleep(0.05)  # a slow reader: the deadline passes mid-stream
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert_no_kv_left(service)


def test_prometheus_metrics_are_exported(service):
    config, earlier = service["config"], service["earlier_replicas"]
    with OverFillClient(service["address"]) as client:
        list(client.generate("metrics please", max_tokens=8))

    def ours() -> list[tuple[str, dict, float]]:
        """This module's replicas' samples (the session's cluster may still export earlier modules')."""
        return [sample for sample in scrape(config) if sample[1].get("replica", "") not in earlier]

    def count(samples, name: str) -> float:
        return sum(metric(samples, f"ray_{name}_count").values())

    assert wait_for(lambda: count(ours(), "overfill_time_to_first_token_seconds") > 0
                    and count(ours(), "overfill_inter_token_latency_seconds") > 0
                    and count(ours(), "overfill_kv_transfer_seconds") > 0, timeout_s=60)
    names = ("ray_overfill_e2e_request_latency_seconds_bucket", "ray_overfill_num_requests_running",
             "ray_overfill_num_requests_waiting", "ray_overfill_kv_cache_usage_perc",
             "ray_overfill_generation_tokens_total", "ray_overfill_prompt_tokens_total")

    def missing() -> list[str]:
        samples = ours()
        found = {name for name, _, _ in samples} | {f"role={labels['role']}" for _, labels, _ in samples
                                                    if "role" in labels}
        return [name for name in (*names, "role=decode", "role=prefill") if name not in found]

    # Each replica exports on its own schedule: wait until every one has (a gauge may lag a histogram).
    assert wait_for(lambda: not missing(), timeout_s=60), missing()
    samples = ours()
    served = config.server.served_model_name or config.models.full
    assert {labels.get("model_name") for name, labels, _ in samples if name.startswith("ray_overfill_")} == {served}
    # What deploy/prometheus/vllm-rules.yaml reads is in the scrape (so vLLM dashboards get their series).
    assert metrics_read_by_the_vllm_rules() <= {name for name, _, _ in samples}
    if not torch.cuda.is_available():
        assert not any(name.startswith("ray_overfill_gpu_") for name, _, _ in scrape(config))  # absent, not zero


def test_loadtest_against_the_local_service(service, tmp_path, capsys):
    """`overfill loadtest` against the real service: ten requests, prompts of exact token lengths from the served
    model's own tokenizer, replicas per pool read from Health, and no KV left."""
    from overfill.cli.main import main

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
    assert_no_kv_left(service)


def test_loadtest_through_the_openai_http_api(service, tmp_path, capsys):
    """`overfill loadtest --backend openai`: the same load through streamed completions on the HTTP port, measured
    the same way: token counts from the service's usage, the served model's tokenizer found through /v1/models,
    replicas per pool from GET /health."""
    from overfill.cli.main import main

    http = f"127.0.0.1:{service['config'].server.http_port}"
    assert main(["loadtest", "--backend", "openai", "--target", http, "--num-prompts", "10", "--request-rate", "20",
                 "--max-concurrency", "4", "--random-input-len", "16", "--random-output-len", "8",
                 "--num-warmups", "1", "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
                 "--disable-tqdm"]) == 0
    assert "Successful requests:                     10" in capsys.readouterr().out
    (path,) = glob.glob(f"{tmp_path}/*.json")
    result = json.loads(open(path).read())
    assert result["backend"] == "overfill-openai" and result["target"] == http
    assert result["completed"] == 10 and result["failed"] == 0 and result["errors_by_code"] == {}
    assert result["token_source"] == "tokenizer" and result["tokenizer_id"] == str(service["full_dir"])
    assert result["input_lens"] == [16] * 10 and result["total_input_tokens"] == 160  # the service's usage
    assert all(1 <= n <= 8 for n in result["output_lens"]) and result["total_output_tokens"] == sum(
        result["output_lens"])
    assert all(t > 0 for t in result["ttfts"]) and result["mean_e2el_ms"] >= result["mean_ttft_ms"] > 0
    assert result["mean_tpot_ms"] >= 0 and result["mean_itl_ms"] >= 0 and result["output_throughput"] > 0
    replicas = [s["replicas"] for s in result["time_series"] if s["replicas"]]
    assert replicas and all(r["prefill"] >= 1 and r["decode"] >= 1 for r in replicas)
    assert_no_kv_left(service)

"""The Grafana dashboard reads only metrics the service exports (names as Prometheus sees them, `ray_` prefixed)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exported_metric_names() -> set[str]:
    source = (ROOT / "services" / "metrics.py").read_text()
    return set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(overfill_[a-z0-9_]+)"', source))


def test_every_dashboard_query_uses_an_exported_metric():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    names = exported_metric_names()
    assert {"overfill_time_to_first_token_seconds", "overfill_kv_transfer_bytes", "overfill_kv_leases_expired"} <= names
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for metric in re.findall(r"ray_(overfill_[a-z0-9_]+)", target["expr"]):
                base = re.sub(r"_(bucket|count|sum)$", "", metric)
                assert base in names, f"{panel['title']}: {metric} is not exported"
                used.add(base)
    assert used == names  # and every exported metric has a panel


VLLM_NAMES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
              "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
              "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"}


def vllm_rules() -> list[dict]:
    import yaml

    (group,) = yaml.safe_load((ROOT / "deploy" / "prometheus" / "vllm-rules.yaml").read_text())["groups"]
    return group["rules"]


def metrics_read_by_the_vllm_rules() -> set[str]:
    """The `ray_overfill_*` series names (as scraped) the recording rules read."""
    return {name for rule in vllm_rules() for name in re.findall(r"ray_overfill_[a-z0-9_]+", rule["expr"])}


def test_the_vllm_recording_rules_read_exported_metrics_and_keep_model_name():
    rules = vllm_rules()
    assert VLLM_NAMES <= {rule["record"] for rule in rules}
    exported = exported_metric_names()
    for name in metrics_read_by_the_vllm_rules():
        assert re.sub(r"_(bucket|count|sum|total)$", "", name.removeprefix("ray_")) in exported, name
    for rule in rules:  # every series keeps the label dashboards select on (and histograms their buckets)
        assert re.search(r"by \(model_name(, le)?\)", rule["expr"]), rule["record"]
        assert ("_bucket" in rule["record"]) == (", le)" in rule["expr"]), rule["record"]

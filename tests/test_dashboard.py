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

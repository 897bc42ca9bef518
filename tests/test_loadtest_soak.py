"""`overfill loadtest soak`: the verdict on synthetic sample series (flat, leaking, lease growth, errors, a replica
added, metrics missing), the Prometheus text parsing of the service's gauges, finding Ray Serve processes and their
RSS (and finding none cleanly), and two short soaks against the model-free stub server: one with a small
Prometheus endpoint and a process to watch (pass), one with neither (metrics and RSS reported unavailable, not 0)."""

import asyncio
import glob
import http.server
import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

import loadtest.soak
from loadtest import service_watch
from loadtest.service_watch import gauges_from, parse_prometheus, role_of, rss_by_role, scrape_service
from loadtest.soak import soak_verdict
from loadtest.stub_server import StubConfig, start_stub
from overfill.cli.main import main
from tests.service_helpers import free_port

RAY_TEXT = """\
# HELP ray_overfill_kv_cache_usage_perc KV slots in use, 0-1.
# TYPE ray_overfill_kv_cache_usage_perc gauge
ray_overfill_kv_cache_usage_perc{Component="core_worker",deployment="decode",replica="a",role="decode"} 0.25
ray_overfill_kv_cache_usage_perc{application="overfill",deployment="decode",replica="b",role="decode"} 0.5
ray_overfill_kv_cache_usage_perc{deployment="prefill",replica="c",role="prefill"} 0.0
# TYPE ray_overfill_kv_leases gauge
ray_overfill_kv_leases{deployment="prefill",replica="c"} 2.0
ray_overfill_kv_leases{deployment="prefill",replica="d"} 1.0 1712345678000
ray_overfill_kv_leases_expired_total{deployment="prefill",replica="c"} 3.0
ray_overfill_num_requests_running{role="router",note="a \\"quoted\\" \\\\ value, with comma"} 4
ray_overfill_num_requests_running{role="decode"} 3
ray_overfill_num_requests_waiting{role="decode"} 1
ray_overfill_time_to_first_token_seconds_count{application="overfill"} 12
"""


def test_prometheus_text_gives_the_services_gauges():
    series = parse_prometheus(RAY_TEXT)
    assert len(series) == 10
    quoted = next(s for s in series if "note" in s.labels)
    assert quoted.labels == {"role": "router", "note": 'a "quoted" \\ value, with comma'} and quoted.value == 4
    gauges = gauges_from(series)
    assert gauges.kv_cache_usage == {"decode": 0.5, "prefill": 0.0}      # the fullest replica per role
    assert gauges.leases == 3.0 and gauges.leases_expired == 3.0           # summed over prefill replicas
    assert gauges.running == {"decode": 3.0, "router": 4.0} and gauges.waiting == {"decode": 1.0}


def test_missing_gauges_are_none_and_bad_text_names_the_line():
    gauges = gauges_from(parse_prometheus("ray_overfill_num_requests_running{role=\"router\"} 0\n"))
    assert gauges.kv_cache_usage is None and gauges.leases is None and gauges.leases_expired is None
    # The expired counter appears only after its first increment: 0 when the service's KV gauges are there.
    assert gauges_from(parse_prometheus('ray_overfill_kv_cache_usage_perc{role="decode"} 0\n')).leases_expired == 0
    with pytest.raises(ValueError, match="line 2 is not a Prometheus sample"):
        parse_prometheus("# ok\nthis is not prometheus\n")
    with pytest.raises(ValueError, match="line 1: bad labels"):
        parse_prometheus('x{role=decode} 1\n')


def test_scrape_of_a_closed_port_is_unavailable_not_zero():
    gauges, error = scrape_service(f"http://127.0.0.1:{free_port()}/metrics", timeout_s=1)
    assert gauges is None and "127.0.0.1" in error


@pytest.mark.parametrize("title, role", [
    ("ray::ServeReplica:overfill:decode", "decode"),
    ("ray::ServeReplica:overfill:router.handle_request_streaming", "router"),
    ("ray::ServeReplica:other-app:prefill", "prefill"),
    ("ray::ProxyActor", "proxy"),
    ("ray::ServeController.listen_for_change", "controller"),
    ("ray::IDLE", None), ("python -m pytest tests/", None), ("/usr/bin/raylet --x", None), ("", None),
])
def test_serve_process_roles_come_from_ray_titles(title, role):
    assert role_of(title) == role


def test_process_discovery_finds_none_cleanly_and_rss_sums_per_role(monkeypatch):
    import psutil

    fake = [SimpleNamespace(info={"pid": 11, "cmdline": ["ray::ServeReplica:overfill:decode"]}),
            SimpleNamespace(info={"pid": 12, "cmdline": ["ray::ServeReplica:overfill:decode.handle"]}),
            SimpleNamespace(info={"pid": 13, "cmdline": None}),
            SimpleNamespace(info={"pid": 14, "cmdline": ["ray::ProxyActor"]})]
    monkeypatch.setattr(psutil, "process_iter", lambda attrs: iter(fake))
    assert service_watch.find_service_processes() == {"decode": [11, 12], "proxy": [14]}
    monkeypatch.setattr(psutil, "process_iter", lambda attrs: iter(fake[2:3]))
    assert service_watch.find_service_processes() == {}
    monkeypatch.undo()
    # A process gone meanwhile is left out, not counted as 0 MiB.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rss = rss_by_role({"decode": [os.getpid(), gone.pid], "prefill": [gone.pid]})
    assert set(rss) == {"decode"} and rss["decode"] > 10


def sample(t, phase="load", rss=None, processes=None, kv=0.0, leases=0.0, expired=0.0, failed=0):
    rss = {"decode": 500.0, "router": 300.0} if rss is None else rss
    metrics = kv is not None
    return {"time_s": t, "phase": phase, "rss_mib": rss or None,
            "processes": processes or ({role: 1 for role in rss} if rss else None),
            "kv_cache_usage": {"decode": kv, "prefill": 0.0} if metrics else None,
            "leases": leases if metrics else None, "leases_expired": expired if metrics else None,
            "service_running": None, "service_waiting": None,
            "metrics_error": None if metrics else "http://x/metrics: connection refused",
            "in_flight": 0, "sent": 0, "completed": 0, "failed": failed}


def series(minutes=10, every_s=5, rss=lambda t: {"decode": 500.0, "router": 300.0}, leases=lambda t: 1.0,
           kv=lambda t: 0.4, drain_leases=0.0, drain_kv=0.0, **kw):
    times = [every_s * k for k in range(1, int(minutes * 60 / every_s) + 1)]
    load = [sample(t, rss=rss(t), kv=kv(t) if kv else None, leases=leases(t), **kw) for t in times]
    end = times[-1]
    drain = [sample(end + every_s * k, "drain", rss=rss(end), kv=drain_kv if kv else None, leases=drain_leases, **kw)
             for k in (1, 2)]
    return load + drain


def statuses(verdict):
    return {c["name"]: c["status"] for c in verdict["checks"]}


def test_flat_memory_and_drained_leases_pass():
    # RSS noise of +-2 MiB around a flat line: no trend.
    verdict = soak_verdict(series(rss=lambda t: {"decode": 500.0 + 2 * (-1) ** int(t / 5), "router": 300.0},
                                  leases=lambda t: float(int(t / 5) % 3)), failed=0, warmup_failures=0)
    assert verdict["verdict"] == "pass", verdict
    assert set(statuses(verdict)) == {"errors", "rss:decode", "rss:router", "lease_trend", "leases_drained",
                                      "kv_idle", "leases_expired"}


def test_a_memory_leak_fails_its_role_only():
    # 3 MiB/min in decode from the start; the router is flat.
    verdict = soak_verdict(series(rss=lambda t: {"decode": 500.0 + 3 * t / 60, "router": 300.0}), 0, 0)
    checks = {c["name"]: c for c in verdict["checks"]}
    assert verdict["verdict"] == "fail"
    assert checks["rss:decode"]["status"] == "fail" and checks["rss:router"]["status"] == "pass"
    assert checks["rss:decode"]["slope_mib_per_min"] == pytest.approx(3.0, rel=1e-6)
    assert checks["rss:decode"]["delta_mib"] == pytest.approx(3.0 * (600 - 300) / 60, abs=0.2)
    # Growth in the first half only (warm-up) is not judged.
    warm = soak_verdict(series(rss=lambda t: {"decode": 500.0 + min(t, 240) / 2, "router": 300.0}), 0, 0)
    assert warm["verdict"] == "pass", warm


def test_a_replica_added_is_a_step_not_a_leak():
    def rss(t):
        return {"decode": 500.0 if t < 400 else 1000.0, "router": 300.0}

    samples = series(rss=rss)
    for s in samples:
        s["processes"]["decode"] = 1 if s["time_s"] < 400 else 2
    verdict = soak_verdict(samples, 0, 0)
    check = next(c for c in verdict["checks"] if c["name"] == "rss:decode")
    assert check["status"] == "pass" and "processes changed [1, 2]" in check["detail"]


def test_lease_growth_leases_left_kv_left_and_expired_leases_fail():
    assert statuses(soak_verdict(series(leases=lambda t: t / 60), 0, 0))["lease_trend"] == "fail"
    left = soak_verdict(series(drain_leases=2.0, drain_kv=0.1), 0, 0)
    assert statuses(left)["leases_drained"] == "fail" and statuses(left)["kv_idle"] == "fail"
    samples = series()
    samples[-1]["leases_expired"] = 1.0
    assert statuses(soak_verdict(samples, 0, 0))["leases_expired"] == "fail"


def test_errors_fail_the_soak():
    verdict = soak_verdict(series(), failed=1, warmup_failures=0)
    assert verdict["verdict"] == "fail" and statuses(verdict)["errors"] == "fail"
    assert statuses(soak_verdict(series(), failed=0, warmup_failures=2))["errors"] == "fail"


def test_missing_metrics_and_processes_make_the_soak_incomplete_never_zero():
    verdict = soak_verdict(series(rss=lambda t: {}, kv=None), 0, 0)
    assert verdict["verdict"] == "incomplete"
    checks = {c["name"]: c for c in verdict["checks"]}
    assert checks["errors"]["status"] == "pass"
    assert checks["rss"]["status"] == "unavailable" and "no Ray Serve process" in checks["rss"]["detail"]
    for name in ("lease_trend", "leases_drained", "kv_idle", "leases_expired"):
        assert checks[name]["status"] == "unavailable" and "connection refused" in checks[name]["detail"]


# --- short soaks against the stub server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stub_port():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, port, _ = asyncio.run_coroutine_threadsafe(
        start_stub(StubConfig(ttft_s=0.02, itl_s=0.005, default_tokens=6)), loop).result(10)
    yield port
    asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def idle_metrics():
    """A Prometheus endpoint that reports an idle service (0 leases, 0 KV use)."""
    text = ('ray_overfill_kv_cache_usage_perc{role="decode"} 0\nray_overfill_kv_cache_usage_perc{role="prefill"} 0\n'
            'ray_overfill_kv_leases 0\nray_overfill_num_requests_running{role="router"} 0\n').encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()


SOAK = ["--request-rate", "8", "--duration-min", "0.05", "--sample-every-s", "0.5", "--drain-s", "3",
        "--random-input-len", "8", "--random-output-len", "6", "--tokenizer", "none", "--disable-tqdm"]


def soak_json(directory):
    (path,) = glob.glob(f"{directory}/soak-*.json")
    assert glob.glob(f"{directory}/soak-*.png")
    return json.loads(open(path).read())


def test_short_soak_with_metrics_and_a_watched_process_passes(stub_port, idle_metrics, tmp_path, capsys,
                                                                 monkeypatch):
    # The test process itself stands in for a service process: its RSS is really read every sample.
    monkeypatch.setattr(loadtest.soak, "find_service_processes", lambda: {"stub": [os.getpid()]})
    argv = ["loadtest", "soak", "--target", f"127.0.0.1:{stub_port}", "--metrics-url", idle_metrics,
            "--max-rss-growth-mib-per-min", "100000", "--result-dir", str(tmp_path), *SOAK]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "stub x1" in out
    result = soak_json(tmp_path)
    assert result["kind"] == "soak" and result["failed"] == 0 and result["completed"] == result["num_prompts"] > 5
    assert result["request_rate"] == 8 and "median_ttft_ms" in result          # the usual flat keys are there
    soak = result["soak"]
    assert soak["verdict"] == "pass" and soak["processes_found"] == {"stub": 1}
    load = [s for s in soak["samples"] if s["phase"] == "load"]
    drain = [s for s in soak["samples"] if s["phase"] == "drain"]
    assert len(load) >= 5 and 1 <= len(drain) <= 4                            # idle at once: the drain ends early
    assert all(s["rss_mib"]["stub"] > 10 and s["leases"] == 0 for s in soak["samples"])
    assert load[-1]["completed"] + load[-1]["failed"] + load[-1]["in_flight"] == load[-1]["sent"]
    assert drain[-1]["completed"] == result["completed"] and drain[-1]["in_flight"] == 0
    assert soak["latency_per_minute"][0]["p50_ttft_ms"] >= 20


def test_short_soak_without_metrics_or_processes_is_incomplete(stub_port, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loadtest.soak, "find_service_processes", lambda: {})
    argv = ["loadtest", "soak", "--target", f"127.0.0.1:{stub_port}", "--metrics-url",
            f"http://127.0.0.1:{free_port()}/metrics", "--result-dir", str(tmp_path), *SOAK]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "none found (RSS not measured)" in out and "0 of" in out and "verdict: INCOMPLETE" in out
    soak = soak_json(tmp_path)["soak"]
    assert soak["verdict"] == "incomplete" and soak["processes_found"] == {}
    assert all(s["rss_mib"] is None and s["kv_cache_usage"] is None and s["leases"] is None
               and s["metrics_error"] for s in soak["samples"])


@pytest.mark.parametrize("argv, message", [
    (["soak", "--duration-min", "1"], "soak needs --request-rate"),
    (["soak", "--request-rate", "1"], "soak needs --duration-min"),
    (["soak", "--request-rate", "1", "--duration-min", "0"], "--duration-min must be > 0"),
    (["soak", "--request-rate", "1", "--duration-min", "1", "--sample-every-s", "0"], "--sample-every-s must be > 0"),
    (["--duration-min", "1"], "--duration-min is for `overfill loadtest soak`"),
    (["sweep", "--metrics-url", "http://x"], "--metrics-url is for `overfill loadtest soak`"),
])
def test_soak_flag_errors_name_the_flag(argv, message, capsys):
    assert main(["loadtest", *argv, "--target", "127.0.0.1:1", "--ready-check-timeout-sec", "0.1"]) == 2
    assert message in capsys.readouterr().err

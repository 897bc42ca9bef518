"""`overfill loadtest` end to end against the model-free stub server (no Ray): one benchmark, its JSON, failures by
status, replicas from Health, API key and TLS, sweep and step outputs, Locust timing over real gRPC, and the client
capacity command. The stub runs on its own event loop in a thread; the CLI runs its own loop as it would."""

import asyncio
import datetime
import glob
import json
import threading

import grpc
import pytest

from loadtest.stream_timing import time_stream
from loadtest.stub_server import StubConfig, start_stub
from overfill.cli.main import main
from overfill.client import make_request
from overfill.v1 import generation_pb2_grpc as pb_grpc

SMALL = ["--random-input-len", "12", "--random-output-len", "9", "--tokenizer", "none", "--disable-tqdm"]


@pytest.fixture(scope="module")
def stubs():
    """start(config, tls=None) -> port; every stub stops at the end of the module."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def start(config: StubConfig, tls=None):
        server, port, servicer = asyncio.run_coroutine_threadsafe(start_stub(config, 0, tls=tls), loop).result(10)
        servers.append(server)
        return port, servicer

    yield start
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def only_json(directory):
    (path,) = glob.glob(f"{directory}/*.json")
    return json.loads(open(path).read())


def test_one_benchmark_measures_the_stubs_timings_and_counts_failures_by_status(stubs, tmp_path, capsys):
    # 2 tokens per chunk after the first: ITL ~ 8 ms per chunk but TPOT ~ 4 ms per token. Every 5th call fails.
    port, servicer = stubs(StubConfig(ttft_s=0.03, itl_s=0.008, tokens_per_chunk=2, fail_every=5,
                                      replicas={"prefill": 1, "decode": 2}))
    argv = ["loadtest", "--target", f"127.0.0.1:{port}", "--num-prompts", "20", "--request-rate", "40",
            "--max-concurrency", "4", "--num-warmups", "2", "--goodput", "ttft:1000", "e2el:5000",
            "--metric-percentiles", "50,90,99", "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
            *SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Serving Benchmark Result" in out and "RESOURCE_EXHAUSTED:" in out
    result = only_json(tmp_path)
    assert servicer.num_requests == 22                                     # 2 warm-ups + 20 measured
    assert result["num_prompts"] == 20 and result["completed"] + result["failed"] == 20
    assert result["errors_by_code"] == {"RESOURCE_EXHAUSTED": 4}  # calls 5, 10, 15, 20 (after 2 warm-ups)
    assert result["total_output_tokens"] == 9 * result["completed"]
    assert result["total_input_tokens"] == 12 * result["completed"]      # the stub reports 12 prompt words
    assert 30 <= result["median_ttft_ms"] < 200
    assert 8 <= result["median_itl_ms"] < 100 and result["median_tpot_ms"] < result["median_itl_ms"]
    assert result["slo_attainment_pct"] == pytest.approx(100 * result["completed"] / 20)
    assert result["max_concurrency"] == 4 and all(s["concurrency"] <= 4 for s in result["time_series"])
    reported = [s["replicas"] for s in result["time_series"] if s["replicas"] is not None]  # None: a poll timed out
    assert reported and all(r == {"decode": 2, "prefill": 1} for r in reported)
    assert len(result["itls"]) == 20 and sum(e != "" for e in result["errors"]) == result["failed"]
    assert result["token_source"] == "words" and result["model_id"] == "stub"


def test_replicas_are_null_when_health_does_not_report_them(stubs, tmp_path):
    port, _ = stubs(StubConfig(ttft_s=0.01, itl_s=0.002))
    assert main(["loadtest", "--target", f"127.0.0.1:{port}", "--num-prompts", "15", "--request-rate", "10",
                 "--save-result", "--result-dir", str(tmp_path), *SMALL]) == 0
    series = only_json(tmp_path)["time_series"]
    assert len(series) >= 1 and all(s["replicas"] is None for s in series)


def test_api_key_is_sent_as_bearer_metadata(stubs, tmp_path, capsys, monkeypatch):
    port, servicer = stubs(StubConfig(ttft_s=0.0, itl_s=0.0, api_key="k" * 20))
    target = ["--target", f"127.0.0.1:{port}", "--num-prompts", "3", "--ready-check-timeout-sec", "2", *SMALL]
    monkeypatch.delenv("OVERFILL_API_KEY", raising=False)
    assert main(["loadtest", *target]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["loadtest", *target, "--api-key", "k" * 20]) == 0
    monkeypatch.setenv("OVERFILL_API_KEY", "k" * 20)
    assert main(["loadtest", *target]) == 0
    assert servicer.num_requests == 6


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    return key_pem, cert_pem, tmp_path / "ca.pem"


def test_tls_with_a_root_certificate(stubs, tmp_path, capsys):
    key_pem, cert_pem, ca = self_signed(tmp_path)
    port, servicer = stubs(StubConfig(ttft_s=0.0, itl_s=0.0), tls=(key_pem, cert_pem))
    common = ["--num-prompts", "3", "--ready-check-timeout-sec", "2", *SMALL]
    assert main(["loadtest", "--target", f"localhost:{port}", "--tls-ca", str(ca), *common]) == 0
    assert main(["loadtest", "--target", f"127.0.0.1:{port}", "--tls-ca", str(ca), "--tls-server-name", "localhost",
                 *common]) == 0
    assert servicer.num_requests == 6
    assert main(["loadtest", "--target", f"localhost:{port}", *common]) == 2  # plaintext to a TLS port: not ready
    assert "not ready" in capsys.readouterr().err


def test_sweep_writes_json_and_plots_and_finds_the_rate(stubs, tmp_path, capsys):
    port, _ = stubs(StubConfig(ttft_s=0.01, itl_s=0.002))
    assert main(["loadtest", "sweep", "--target", f"127.0.0.1:{port}", "--rates", "40,20", "--num-prompts", "12",
                 "--goodput", "ttft:2000", "--result-dir", str(tmp_path), *SMALL]) == 0
    assert "highest rate meeting 90% SLO attainment: 40 req/s" in capsys.readouterr().out
    data = only_json(tmp_path)
    assert data["max_rate_meeting_slo"] == 40 and [p["request_rate"] for p in data["points"]] == [20, 40]
    assert [run["request_rate"] for run in data["runs"]] == [20, 40] and all(r["completed"] == 12 for r in data["runs"])
    for name in data["plots"]:
        assert (tmp_path / name).stat().st_size > 10_000


def test_step_reports_stages_windows_and_replicas(stubs, tmp_path, capsys):
    port, _ = stubs(StubConfig(ttft_s=0.01, itl_s=0.002, replicas={"decode": 1, "prefill": 1, "router": 1}))
    stages = '[{"rate": 20, "duration": 1.5}, {"rate": 0, "duration": 1}]'
    assert main(["loadtest", "step", "--target", f"127.0.0.1:{port}", "--stages", stages, "--window-s", "1",
                 "--result-dir", str(tmp_path), *SMALL]) == 0
    assert "decode 1-1" in capsys.readouterr().out
    data = only_json(tmp_path)
    first, idle = data["stage_reports"]
    assert first["sent"] == data["num_prompts"] > 0 and first["failed"] == 0 and idle["sent"] == 0
    assert first["replicas_min_max"]["decode"] == [1, 1]
    assert data["duration"] >= 2.5 and len(data["windows"]) == 3 and data["windows"][2]["sent"] == 0
    assert {"decode": 1, "prefill": 1, "router": 1} in [s["replicas"] for s in data["time_series"][-2:]]
    assert (tmp_path / data["plots"][0]).stat().st_size > 10_000


def test_locust_timing_over_real_grpc(stubs):
    port, _ = stubs(StubConfig(ttft_s=0.05, itl_s=0.01, fail_every=2))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = make_request(prompt="hello there", max_tokens=5)
        ok = time_stream(lambda: stub.Generate(request, timeout=10))
        failed = time_stream(lambda: stub.Generate(request, timeout=10))
    assert ok.error is None and ok.output_tokens == 5 and 50 <= ok.ttft_ms < ok.e2e_ms
    assert ok.e2e_ms >= 50 + 4 * 10
    assert failed.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and failed.ttft_ms is None


def test_client_capacity_command_runs_against_its_own_stub(tmp_path, capsys):
    assert main(["loadtest", "client-capacity", "--rates", "10", "--seconds-per-rate", "2", "--save-result",
                 "--result-dir", str(tmp_path), "--compare-rps", "2", "--disable-tqdm"]) == 0
    out = capsys.readouterr().out
    assert "client CPU" in out and ("highest sustained rate: 10 req/s" in out or "no rate was sustained" in out)
    (row,) = only_json(tmp_path)["rows"]
    assert row["num_requests"] == 20 and row["failed"] == 0
    assert row["achieved_send_rps"] == pytest.approx(10, rel=0.5) and row["ttft_p50_ms"] >= 50

"""Request tracing (overfill/serving/tracing.py, services/router/request_trace.py): the `tracing` config section and
its errors, W3C trace context from one process's span to another's, sampling followed across processes, the file and
OTLP/HTTP exporters, status codes on failed spans, the router's spans of a migrated request, the workers' batch and
KV pull spans, and one request through a running service giving one trace across the router, prefill and decode
replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import http.server
import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from overfill.engine.sampling import SamplingParams
from overfill.serving.config import ConfigError, TracingConfig, load_config
from overfill.serving.tracing import Tracing, carrier_of, check_exporter, process_tracing
from overfill.serving.types import PrefillRequest, PrefillResult, ServiceError
from overfill.status import StatusCode
from tests.service_helpers import wait_for

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")  # version, trace, parent span, flags
OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def file_config(path: Path, **fields) -> TracingConfig:
    return TracingConfig(enabled=True, exporter="file", file=str(path), **fields)


def read_spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def tracings():
    """Builds Tracings (one per simulated process) and shuts them down after the test: their export threads too."""
    built = []

    def build(config: TracingConfig, component: str) -> Tracing:
        built.append(Tracing(config, component))
        return built[-1]

    yield build
    for tracing in built:
        tracing.close()


def flushed(*tracings: Tracing) -> None:
    for tracing in tracings:
        tracing.flush()


# ---- the config section ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["tracing.exporter=zipkin"], r"tracing.exporter = 'zipkin' is invalid: must be one of otlp, console, file"),
    (["tracing.endpoint=127.0.0.1:4318"], r"tracing.endpoint = '127.0.0.1:4318' is invalid: must be an http:// or "
                                          r"https:// URL"),
    (["tracing.enabled=true", "tracing.exporter=file"], r"tracing.file = '' is invalid: must be an absolute path"),
    (["tracing.enabled=true", "tracing.exporter=file", "tracing.file=traces.jsonl"],
     r"tracing.file = 'traces.jsonl' is invalid: must be an absolute path"),
    (["tracing.sample_ratio=1.5"], r"tracing.sample_ratio = 1.5 is invalid: must be in \[0, 1\]"),
    (["tracing.sample_ratio=.nan"], r"tracing.sample_ratio = nan is invalid"),
    (["tracing.service_name=' '"], r"tracing.service_name = ' ' is invalid: must be a non-empty name"),
    (["tracing.enabled=yes please"], r"tracing.enabled must be bool, got 'yes please'"),
    (["tracing.headers=x"], r"unknown field tracing.headers"),
])
def test_tracing_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_tracing_is_off_by_default_and_the_shipped_deploy_files_keep_it_off():
    import yaml

    from overfill.serving.config import config_from_dict, service_args_of

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    rayservice = next(doc for doc in yaml.safe_load_all((deploy / "kuberay" / "rayservice.yaml").read_text())
                      if doc["kind"] == "RayService")
    cluster = config_from_dict(service_args_of(yaml.safe_load(rayservice["spec"]["serveConfigV2"])))
    assert load_config(None).tracing == TracingConfig(enabled=False)
    assert not load_config(deploy / "local.yaml").tracing.enabled
    assert not cluster.tracing.enabled and cluster.tracing.exporter == "otlp"  # the section is there, to turn on
    assert process_tracing(TracingConfig(), "router") is None


def test_an_otlp_exporter_whose_package_is_missing_stops_the_service_before_anything_starts(monkeypatch):
    from services.app import start_service

    monkeypatch.setitem(sys.modules, OTLP_MODULE, None)  # importing it now raises ImportError
    config = load_config(None, ["tracing.enabled=true", "models.full=/nonexistent", "models.decoder=/nonexistent"])
    message = r"tracing.exporter = 'otlp' needs the package opentelemetry-exporter-otlp-proto-http"
    with pytest.raises(ConfigError, match=message):
        check_exporter(config.tracing)
    with pytest.raises(ConfigError, match=message):  # before the models are looked at, before Ray starts
        start_service(config)
    check_exporter(TracingConfig(enabled=False))  # nothing is needed while tracing is off


def test_a_trace_file_that_cannot_be_opened_names_tracing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"tracing.file = '.*/missing/traces.jsonl' cannot be opened"):
        Tracing(file_config(tmp_path / "missing" / "traces.jsonl"), "router")


# ---- spans and carriers ----------------------------------------------------------------------------------------------


def test_a_carrier_parents_another_processes_span_in_the_same_trace(tmp_path, tracings):
    path = tmp_path / "traces.jsonl"
    router, prefill = tracings(file_config(path), "router"), tracings(file_config(path), "prefill")
    root = router.start("overfill.request", None, {"overfill.request_id": "r-1"})
    carrier = carrier_of(root)
    assert set(carrier) == {"traceparent"}
    trace_id, span_id, flags = TRACEPARENT.fullmatch(carrier["traceparent"]).groups()
    assert int(flags, 16) & 1  # sampled
    with prefill.span("prefill.batch", dict(carrier), {"overfill.batch.size": 2}):
        pass
    router.end(root)
    flushed(router, prefill)
    spans = {span["name"]: span for span in read_spans(path)}
    assert spans.keys() == {"overfill.request", "prefill.batch"}
    assert spans["overfill.request"]["trace_id"] == spans["prefill.batch"]["trace_id"] == trace_id
    assert spans["overfill.request"]["span_id"] == span_id and spans["overfill.request"]["parent_span_id"] is None
    assert spans["prefill.batch"]["parent_span_id"] == span_id
    assert spans["prefill.batch"]["attributes"] == {"overfill.batch.size": 2}
    assert spans["overfill.request"]["resource"]["overfill.component"] == "router"
    assert spans["prefill.batch"]["resource"]["overfill.component"] == "prefill"
    assert {span["resource"]["service.name"] for span in spans.values()} == {"overfill"}
    assert all(span["status"]["code"] == "UNSET" and span["end_time_unix_nano"] >= span["start_time_unix_nano"]
               for span in spans.values())


def test_a_request_the_router_does_not_sample_is_traced_by_no_replica(tmp_path, tracings):
    path = tmp_path / "traces.jsonl"
    router = tracings(file_config(path, sample_ratio=0.0), "router")
    decode = tracings(file_config(path, sample_ratio=1.0), "decode")  # follows the router's choice, not its own
    root = router.start("overfill.request", None)
    carrier = carrier_of(root)
    assert not int(TRACEPARENT.fullmatch(carrier["traceparent"])[3], 16) & 1  # not sampled, as the next process hears
    with decode.span("kv_pull", carrier):
        pass
    router.end(root)
    flushed(router, decode)
    assert read_spans(path) == []


def test_a_failed_span_carries_its_status_code_and_never_the_errors_text(tmp_path, tracings):
    path = tmp_path / "traces.jsonl"
    decode = tracings(file_config(path), "decode")
    with pytest.raises(ServiceError):
        with decode.span("kv_pull", None):
            raise ServiceError(StatusCode.UNAVAILABLE, "KV pull from 10.1.2.3:41234 failed: connection reset")
    with pytest.raises(asyncio.CancelledError):
        with decode.span("kv_pull", None):
            raise asyncio.CancelledError
    with pytest.raises(KeyError):
        with decode.span("kv_pull", None):
            raise KeyError("secret-looking text")
    flushed(decode)
    spans = read_spans(path)
    assert [(s["status"], s["attributes"]["overfill.status_code"]) for s in spans] == [
        ({"code": "ERROR", "description": code}, code) for code in ("UNAVAILABLE", "CANCELLED", "INTERNAL")]
    text = path.read_text()
    assert "10.1.2.3" not in text and "secret-looking" not in text and "connection reset" not in text


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint on loopback that keeps what it is sent."""

    received: list[tuple[str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_otlp_exporter_sends_spans_to_the_collector_over_http(tracings):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.received = []
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        router = tracings(TracingConfig(enabled=True, exporter="otlp", endpoint=endpoint, service_name="svc"),
                          "router")
        root = router.start("overfill.request", None, {"overfill.request_id": "otlp-1"})
        with router.span("tokenize", root):
            pass
        router.end(root)
        flushed(router)
    finally:
        server.shutdown()
        server.server_close()
    assert [path for path, _ in _Collector.received] == ["/v1/traces"]
    export = ExportTraceServiceRequest.FromString(_Collector.received[0][1])
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "svc" and resource["overfill.component"] == "router"
    spans = {span.name: span for scope in resource_spans.scope_spans for span in scope.spans}
    assert spans.keys() == {"overfill.request", "tokenize"}
    assert spans["tokenize"].parent_span_id == spans["overfill.request"].span_id
    assert spans["tokenize"].trace_id == spans["overfill.request"].trace_id


# ---- the router's spans of one request -------------------------------------------------------------------------------


def test_a_migrated_request_is_one_trace_with_a_prefill_kv_pull_and_decode_per_attempt(tmp_path, tracings):
    """The router's RequestTrace driven as `_generate` drives it for a request whose first decode replica died after
    3 decoded tokens: the replicas' spans hang off the carriers it hands out."""
    from ray.exceptions import ActorDiedError

    from services.router.request_trace import RequestTracer
    from services.router.server import service_error_of

    path = tmp_path / "traces.jsonl"
    router, prefill, decode = (tracings(file_config(path), name) for name in ("router", "prefill", "decode"))
    trace = RequestTracer(router, service_error_of).start("mig-1")
    with trace.tokenize():
        pass
    trace.tokenized("mig-1", 5)
    sent = 0
    for attempt, decoded in enumerate((3, 4)):
        with trace.prefill(attempt, 5 + sent) as carrier:
            request = PrefillRequest(f"mig-1/{attempt}", [1] * (5 + sent), SamplingParams(), carrier)
            with prefill.span("prefill.batch", request.trace_context):
                pass
        sent += 1  # the first token, from prefill
        result = trace.for_decode(PrefillResult(request.request_id, None, 7, 5 + sent, None, 0, 0.0))
        with decode.span("kv_pull", result.trace_context):
            pass
        trace.decode_started(attempt, sent)
        sent += decoded
        if attempt == 0:
            trace.decode_failed(ActorDiedError(), sent)
            trace.decode_ended(sent)  # `_generate`'s finally: the span is over already
    trace.finished(sent, "length")
    trace.decode_ended(sent)
    trace.end()
    flushed(router, prefill, decode)

    spans = read_spans(path)
    assert len({span["trace_id"] for span in spans}) == 1
    by_id = {span["span_id"]: span for span in spans}
    (root,) = [span for span in spans if span["name"] == "overfill.request"]

    def parent(span):
        return by_id[span["parent_span_id"]]["name"]

    assert sorted((span["name"], parent(span)) for span in spans if span is not root) == sorted(
        [("tokenize", "overfill.request")] + [("prefill", "overfill.request"), ("prefill.batch", "prefill"),
                                              ("kv_pull", "overfill.request"), ("decode", "overfill.request")] * 2)
    assert root["attributes"] == {"overfill.request_id": "mig-1", "overfill.prompt_tokens": 5,
                                  "overfill.completion_tokens": 9, "overfill.finish_reason": "length",
                                  "overfill.migrations": 1}
    assert root["status"]["code"] == "UNSET" and root["kind"] == "SERVER"
    decodes = sorted((span for span in spans if span["name"] == "decode"), key=lambda s: s["start_time_unix_nano"])
    assert [(s["attributes"]["overfill.attempt"], s["attributes"]["overfill.decode.tokens"], s["status"]["code"],
             s["attributes"].get("overfill.status_code")) for s in decodes] == [
        (0, 3, "ERROR", "UNAVAILABLE"), (1, 4, "UNSET", None)]
    prefills = [span["attributes"] for span in spans if span["name"] == "prefill"]
    assert sorted((p["overfill.attempt"], p["overfill.prompt_tokens"]) for p in prefills) == [(0, 5), (1, 9)]


def test_an_untraced_request_hands_out_no_carrier_and_no_copy_of_its_ticket():
    from services.router.request_trace import RequestTracer
    from services.router.server import service_error_of

    trace = RequestTracer(None, service_error_of).start("plain-1")
    with trace.tokenize():
        trace.tokenized("plain-1", 3)
    with trace.prefill(0, 3) as carrier:
        assert carrier is None
    result = PrefillResult("plain-1/x", None, 7, 3, None, 0, 0.0)
    assert trace.for_decode(result) is result
    trace.decode_started(0, 1)
    trace.finished(2, "stop")
    trace.decode_ended(2)
    trace.end()
    assert trace.root is None


# ---- the workers' spans ----------------------------------------------------------------------------------------------


def test_each_request_of_a_batch_gets_the_batchs_span_in_its_own_trace_and_its_kv_pull(tmp_path, tracings):
    from overfill.engine.runner import ModelRunner
    from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
    from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
    from overfill.transport.base import make_receiver, make_sender
    from tests.tiny import tiny_decoder, tiny_model

    path = tmp_path / "traces.jsonl"
    router, prefill_tracing, decode_tracing = (tracings(file_config(path), name)
                                               for name in ("router", "prefill", "decode"))
    full = tiny_model("qwen3")
    sender = make_sender("inprocess", secret="tracing-test")
    prefill = PrefillWorker(ModelRunner(full), sender, {2}, PrefillSettings(max_seq_len=64), prefill_tracing)
    decode = DecodeWorker(ModelRunner(tiny_decoder(full, 32, 48)), make_receiver("inprocess", secret="tracing-test"),
                          {2}, DecodeSettings(num_slots=2, max_seq_len=64), decode_tracing)
    sampling = SamplingParams(max_new_tokens=4, ignore_eos=True)
    roots = {name: router.start("overfill.request", None) for name in ("a", "b")}

    async def one(name, prompt):
        result = await prefill.prefill(PrefillRequest(name, prompt, sampling, carrier_of(roots[name])))
        result = dataclasses.replace(result, trace_context=carrier_of(roots[name]))
        return [chunk async for chunk in decode.generate(result, sampling)]

    async def run():
        return await asyncio.gather(one("a", [3, 1, 4, 1, 5]), one("b", [9, 2, 6]))

    try:
        asyncio.run(run())
    finally:
        prefill.close(), decode.close()
    for root in roots.values():
        router.end(root)
    flushed(router, prefill_tracing, decode_tracing)

    spans = read_spans(path)
    for name, root in roots.items():
        trace_id = format(root.get_span_context().trace_id, "032x")
        in_trace = {span["name"]: span for span in spans if span["trace_id"] == trace_id}
        assert in_trace.keys() == {"overfill.request", "prefill.batch", "kv_pull"}
        root_id = in_trace["overfill.request"]["span_id"]
        assert in_trace["prefill.batch"]["parent_span_id"] == in_trace["kv_pull"]["parent_span_id"] == root_id
        batch = in_trace["prefill.batch"]["attributes"]
        assert batch["overfill.batch.size"] == 2 and batch["overfill.batch.prompt_tokens"] == 8
        assert batch["overfill.prompt_tokens"] == {"a": 5, "b": 3}[name]
        pull = in_trace["kv_pull"]["attributes"]
        assert pull["overfill.lease_id"] == name and pull["overfill.kv.tokens"] == {"a": 5, "b": 3}[name]
        assert pull["overfill.kv.bytes"] > 0
        assert all(span["status"]["code"] == "UNSET" for span in in_trace.values())


# ---- a running service -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced_service(service_models, tmp_path_factory):
    from tests.service_helpers import tiny_service

    path = tmp_path_factory.mktemp("tracing") / "traces.jsonl"
    with tiny_service(service_models, "tracing.enabled=true", "tracing.exporter=file",
                      f"tracing.file={path}") as service:
        yield {**service, "traces": path}


def http_completion(service: dict, request_id: str, prompt: str, max_tokens: int) -> dict:
    import urllib.request

    config = service["config"]
    body = json.dumps({"model": config.server.served_model_name or config.models.full, "prompt": prompt,
                       "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{config.server.http_port}/v1/completions", data=body,
                                     headers={"content-type": "application/json", "x-request-id": request_id})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.service
def test_one_request_is_one_trace_across_the_router_prefill_and_decode_replicas(traced_service):
    from overfill.client import OverFillClient, OverFillError

    prompt = "tracing is a word"
    path = traced_service["traces"]
    with OverFillClient(traced_service["address"], timeout_s=60) as client:
        reply = client.generate_unary(prompt, max_tokens=6, request_id="traced-1")
        with pytest.raises(OverFillError) as refused:
            client.generate_unary(prompt, max_tokens=100000, request_id="refused-1")
    assert refused.value.code is StatusCode.INVALID_ARGUMENT
    completion = http_completion(traced_service, "traced-http-1", prompt, max_tokens=3)

    def roots():
        return {span["attributes"].get("overfill.request_id"): span for span in read_spans(path)
                if span["name"] == "overfill.request"}

    def complete(request_id: str, num_spans: int) -> bool:  # each process exports its spans within a second
        root = roots().get(request_id)
        return root is not None and sum(s["trace_id"] == root["trace_id"] for s in read_spans(path)) == num_spans

    assert wait_for(lambda: complete("traced-1", 6) and complete("traced-http-1", 6) and complete("refused-1", 2),
                    15), read_spans(path)
    root = roots()["traced-1"]
    spans = [span for span in read_spans(path) if span["trace_id"] == root["trace_id"]]
    by_name = {span["name"]: span for span in spans}
    assert sorted(by_name) == ["decode", "kv_pull", "overfill.request", "prefill", "prefill.batch", "tokenize"]
    parents = {name: next((s["name"] for s in spans if s["span_id"] == span["parent_span_id"]), None)
               for name, span in by_name.items()}
    assert parents == {"overfill.request": None, "tokenize": "overfill.request", "prefill": "overfill.request",
                       "prefill.batch": "prefill", "kv_pull": "overfill.request", "decode": "overfill.request"}
    components = {name: span["resource"]["overfill.component"] for name, span in by_name.items()}
    assert components == {"overfill.request": "router", "tokenize": "router", "prefill": "router",
                          "decode": "router", "prefill.batch": "prefill", "kv_pull": "decode"}
    assert len({span["resource"]["process.pid"] for span in spans}) == 3  # three processes, one trace
    assert root["attributes"]["overfill.completion_tokens"] == len(reply.token_ids) == 6
    assert root["attributes"]["overfill.finish_reason"] == reply.finish_reason
    assert root["attributes"]["overfill.prompt_tokens"] == reply.usage.prompt_tokens
    assert by_name["decode"]["attributes"]["overfill.decode.tokens"] == 5  # the first token came from prefill
    assert all(span["status"]["code"] == "UNSET" for span in spans)
    order = [by_name[name]["start_time_unix_nano"] for name in ("tokenize", "prefill", "prefill.batch", "kv_pull",
                                                                 "decode")]
    assert order == sorted(order)

    refused_root = roots()["refused-1"]
    refused_spans = {s["name"]: s for s in read_spans(path) if s["trace_id"] == refused_root["trace_id"]}
    assert refused_spans.keys() == {"overfill.request", "tokenize"}
    for span in refused_spans.values():
        assert span["status"] == {"code": "ERROR", "description": "INVALID_ARGUMENT"}
        assert span["attributes"]["overfill.status_code"] == "INVALID_ARGUMENT"

    http_root = roots()["traced-http-1"]  # the HTTP API's requests take the same path
    assert http_root["attributes"]["overfill.completion_tokens"] == completion["usage"]["completion_tokens"] == 3
    assert {s["name"] for s in read_spans(path) if s["trace_id"] == http_root["trace_id"]} == set(by_name)
    assert prompt not in path.read_text()  # spans never carry the prompt

"""`serve run deploy/local.yaml` behaves like `overfill serve`: Ray's own CLI, in a process of its own with a fresh Ray
cluster and none of the settings `overfill serve` puts in its environment, serves deploy/local.yaml's Serve part
(its servicers and controller_options) with tiny models as args. Bad UTF-8 is INVALID_ARGUMENT naming the field, and
a request over MAX_REQUEST_BYTES is refused by the proxy before it reads it (its limit from the file's
controller_options; Ray's default would read up to 2 GiB)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from overfill.client import OverFillClient
from overfill.serving.config import APP_IMPORT_PATH
from overfill.v1 import generation_pb2 as pb
from services.app import SERVE_PROCESS_ENV
from services.router.grpc_handlers import MAX_REQUEST_BYTES
from tests.service_helpers import free_port, tiny_service_config

pytestmark = [pytest.mark.service, pytest.mark.ray_apart]

REPO = Path(__file__).resolve().parents[1]
PROXY_MAX_BYTES = int(SERVE_PROCESS_ENV["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"])
START_TIMEOUT_S = 180


def local_yaml_on_tiny_models(models: tuple[Path, Path]) -> dict:
    """deploy/local.yaml with its Serve part as it is (servicers, controller_options, deployments) on free ports,
    and the tiny models' ServiceConfig as the application's args."""
    serve_file = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    config = tiny_service_config(*models)
    args = dataclasses.asdict(config)
    for owned in ("app_name", "route_prefix", "grpc_port", "http_port"):
        del args["server"][owned]
    del args["kv"]["secret"]
    (app,) = [a for a in serve_file["applications"] if a["import_path"] == APP_IMPORT_PATH]
    app["args"] = args
    serve_file["grpc_options"]["port"] = free_port()
    serve_file["http_options"]["port"] = free_port()
    return serve_file


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory, service_models):
    root = tmp_path_factory.mktemp("serve-run")
    path = root / "local.yaml"
    serve_file = local_yaml_on_tiny_models(service_models)
    path.write_text(yaml.safe_dump(serve_file))
    # The environment of a shell that has never run `overfill serve`: no Serve settings, no cluster address.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_ADDRESS"}
    log = (root / "serve-run.log").open("wb")
    process = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", "--address", "local", str(path)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{serve_file['grpc_options']['port']}"
    try:
        wait_until_serving(address, process, root / "serve-run.log")
        yield address
    finally:
        process.send_signal(signal.SIGINT)  # serve run deletes the app and stops the Ray cluster it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def wait_until_serving(address: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with OverFillClient(address, timeout_s=5) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"serve run exited with {process.returncode}: {log.read_text()[-3000:]}"
            try:
                if client.health() == "SERVING":
                    return
            except Exception:  # noqa: BLE001  Ray, the proxy or the application is not up yet
                pass
            time.sleep(1)
    raise TimeoutError(f"serve run did not serve within {START_TIMEOUT_S} s: {log.read_text()[-3000:]}")


def unary(address: str, raw: bytes) -> tuple[str, str]:
    """(status name, details) of GenerateUnary with `raw` as the request's bytes."""
    options = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary("/overfill.v1.Generation/GenerateUnary", request_serializer=None,
                                   response_deserializer=pb.GenerateUnaryResponse.FromString)
        try:
            call(raw, timeout=60)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""


def test_serve_run_answers_a_valid_request(serve_run):
    with OverFillClient(serve_run, timeout_s=60) as client:
        assert len(client.generate_unary("one two three", max_tokens=4).token_ids) == 4


def test_serve_run_refuses_bad_utf8_with_invalid_argument_naming_the_field(serve_run):
    # A stop string (field 7) of bytes that are not UTF-8: protobuf refuses them; the generated servicer made the
    # proxy answer UNKNOWN.
    raw = pb.GenerateRequest(prompt="hi", max_tokens=2).SerializeToString() + b"\x3a\x02\xc3\x28"
    code, details = unary(serve_run, raw)
    assert code == "INVALID_ARGUMENT" and "stop" in details, (code, details)


def test_serve_run_refuses_oversized_requests_unparsed(serve_run):
    """The proxy's own limit is the servicer's: gRPC's core refuses a larger request, naming both sizes, before any
    Python reads it."""
    assert PROXY_MAX_BYTES == MAX_REQUEST_BYTES
    over = pb.GenerateRequest(prompt="x" * MAX_REQUEST_BYTES, max_tokens=2).SerializeToString()
    code, details = unary(serve_run, over)
    assert code == "RESOURCE_EXHAUSTED" and f"{len(over)} vs. {MAX_REQUEST_BYTES}" in details, (code, details)

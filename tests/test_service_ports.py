"""Starting the service: a port it binds that is taken is refused up front, naming its field, before Ray starts; a
start that fails later shuts down the Ray it started; the tests' own ports never come from the range the kernel hands
out to Ray's bind(0)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from overfill.serving.config import ConfigError, load_config
import services.app
from services.app import refuse_ports_in_use, start_service, stop_service
from tests.service_helpers import free_port, ports_outside_the_ephemeral_range, tiny_service_config


def config_on_free_ports(*overrides: str):
    return load_config(None, [f"server.grpc_port={free_port()}", f"server.http_port={free_port()}",
                              f"server.metrics_port={free_port()}", *overrides])


@pytest.mark.parametrize("field", ["server.grpc_port", "server.http_port", "server.metrics_port"])
def test_a_port_something_listens_on_is_refused_naming_its_field(field):
    config = config_on_free_ports()
    taken = getattr(config.server, field.split(".")[1])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", taken))
        listener.listen()
        with pytest.raises(ConfigError, match=rf"^{field} = {taken} cannot be bound on [0-9.]+: .*in use"):
            refuse_ports_in_use(config, http_host="127.0.0.1")


def test_the_tls_port_is_checked_only_with_tls_on(tmp_path: Path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        refuse_ports_in_use(config_on_free_ports(f"server.tls_port={taken}"), http_host="127.0.0.1")
        (tmp_path / "cert.pem").write_text("unused")
        (tmp_path / "key.pem").write_text("unused")
        with_tls = config_on_free_ports(f"server.tls_port={taken}", f"server.tls_cert_file={tmp_path / 'cert.pem'}",
                                        f"server.tls_key_file={tmp_path / 'key.pem'}")
        with pytest.raises(ConfigError, match=rf"^server.tls_port = {taken} cannot be bound"):
            refuse_ports_in_use(with_tls, http_host="127.0.0.1")


def test_free_ports_pass():
    refuse_ports_in_use(config_on_free_ports(), http_host="127.0.0.1")


def test_test_ports_lie_outside_the_ephemeral_range():
    ports = ports_outside_the_ephemeral_range()
    picked = [free_port() for _ in range(50)]
    assert len(set(picked)) == 50
    assert all(port in ports and port >= 20000 for port in picked)
    with socket.socket() as s:  # what Ray's own bind(0) gets
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[1] not in ports


@pytest.mark.service
@pytest.mark.stops_session_ray
def test_a_start_that_fails_after_ray_started_leaves_no_ray_behind(service_models, monkeypatch):
    import ray

    def never_serving(address: str, app_name: str) -> None:
        raise TimeoutError(f"the service at {address} did not become healthy")

    monkeypatch.setattr(services.app, "wait_until_serving", never_serving)
    config = tiny_service_config(*service_models)
    stop_service()  # the session's cluster, if a module before started it: this start must start its own Ray
    assert not ray.is_initialized()
    with pytest.raises(TimeoutError, match="did not become healthy"):
        start_service(config, ray_init_kwargs={"num_cpus": 2})
    assert not ray.is_initialized()
    refuse_ports_in_use(config, http_host="127.0.0.1")  # the proxies' ports are free again


def test_sigterm_stops_the_service_cleanly_though_ray_init_installs_its_own_handler(monkeypatch):
    """ray.init replaces the SIGTERM handler with one of its own, under which `overfill serve` died mid-shutdown and
    left Ray's agents running with the metrics port bound (the next start was refused). serve_forever takes SIGTERM
    back once the service is up, and stops it."""
    import os
    import signal
    import threading
    from types import SimpleNamespace

    from overfill.serving.config import load_config
    from services import app

    stopped, ray_handled = [], []

    def start_like_ray(config, serve_file=None):
        signal.signal(signal.SIGTERM, lambda *_: ray_handled.append(True))  # as ray.init does

    class Healthy:
        def __init__(self, address):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def health_report(self):
            return SimpleNamespace(replicas={"prefill": 1, "decode": 1})

    monkeypatch.setattr(app, "start_service", start_like_ray)
    monkeypatch.setattr(app, "stop_service", lambda: stopped.append(True))
    monkeypatch.setattr("overfill.client.OverFillClient", Healthy)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    timers = [threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)),
              threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))]  # ends the test if SIGTERM did not
    for timer in timers:
        timer.start()
    try:
        app.serve_forever(load_config(None, ["auth.enabled=true"]))
    finally:
        for timer in timers:
            timer.cancel()
        signal.signal(signal.SIGTERM, previous[0]), signal.signal(signal.SIGINT, previous[1])
    assert ray_handled == [] and stopped == [True]

"""Shared by the tests that start the service: tiny models on disk, a config on the session's ports, the session's
one Ray cluster and Serve instance (each module deploys its application on it and deletes it afterwards), waiting
for a condition, and the leak check every service test ends with."""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from overfill.build_decoder import PruneSpec, build_decoder
from overfill.serving.config import APP_IMPORT_PATH, ServiceConfig, load_config
from tests.tiny import CORPUS, save_tiny


_ports_handed_out: set[int] = set()
_RAY_WORKER_PORTS_END = 20000  # Ray's workers take ports 10002-19999 by default
_port_picker = random.Random()  # its own: tests that seed the global generator must not pick the same ports


@functools.cache
def ports_outside_the_ephemeral_range() -> range:
    """Ports the kernel never hands out for bind(0) or an outgoing connection. Ray binds port 0 for several of its
    own ports while it starts, and the kernel readily offers a port a test has just freed again: a port picked by
    binding 0 was taken by Ray before Serve's proxy could bind it (CI: "Failed to bind to address")."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except OSError:  # not Linux: the IANA ephemeral range
        low, high = 49152, 65535
    if low - _RAY_WORKER_PORTS_END >= 1000:
        return range(_RAY_WORKER_PORTS_END, low)
    if 65535 - high >= 1000:
        return range(high + 1, 65536)
    return range(_RAY_WORKER_PORTS_END, 65536)


def free_port() -> int:
    """A free local port outside the ephemeral range that this test process has not handed out before (two
    settings given the same port make a config invalid). Under pytest-xdist each worker picks from its own residue
    class, so that two workers never pick the same port at the same time."""
    ports = ports_outside_the_ephemeral_range()
    num_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    while True:
        port = _port_picker.randrange(ports.start, ports.stop)
        if port in _ports_handed_out or port % num_workers != worker:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port


def build_tiny_models(root: Path) -> tuple[Path, Path]:
    """A tiny Llama full model and its decoder pruned to hidden 48, MLP 64. Returns (full_dir, decoder_dir)."""
    full_dir = save_tiny(root / "full", arch="llama")
    calibration = root / "cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    build_decoder(PruneSpec(str(full_dir), 48, 64, output=root / "decoder", calibration=[calibration]), progress=False)
    return full_dir, root / "decoder"


@functools.cache
def session_ports() -> tuple[str, ...]:
    """The gRPC, HTTP and metrics ports of this test session, as overrides. One Ray cluster and one Serve instance
    serve the whole session, and Serve's proxies (like Ray's metrics export) keep the ports they started with, so
    every service the tests deploy uses these."""
    return (f"server.grpc_port={free_port()}", f"server.http_port={free_port()}",
            f"server.metrics_port={free_port()}")


def tiny_service_config(full_dir: Path, decoder_dir: Path, *overrides: str) -> ServiceConfig:
    """Small limits, a quarter CPU per replica, the session's ports and no API keys (auth.enabled=false: the ingress
    tests turn it on); later overrides win."""
    return load_config(None, [
        "auth.enabled=false", f"models.full={full_dir}", f"models.decoder={decoder_dir}", *session_ports(),
        "server.max_context_tokens=256", "server.max_tokens_limit=64", "server.default_max_tokens=16",
        "decode.num_slots=4", "decode.max_waiting=16", "prefill.num_cpus=0.25", "decode.num_cpus=0.25",
        "server.num_cpus=0.25", *overrides,
    ])


RAY_INIT = {"num_cpus": 2}  # the session's Ray cluster: two CPUs, as on the CI machine


def session_ray() -> None:
    """The session's Ray cluster, started on first use (as start_service would start it: the session's metrics port,
    Serve's environment) and stopped at the end of the session (tests/conftest.py)."""
    from services.app import start_ray

    start_ray(load_config(None, list(session_ports())), RAY_INIT)


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def pool_stats(config: ServiceConfig, pool: str) -> dict:
    """One replica's own accounting (`stats()`): leases for prefill, free slots for decode."""
    from ray import serve

    return serve.get_deployment_handle(pool, config.server.app_name).stats.remote().result()


def assert_no_kv_left(config: ServiceConfig, timeout_s: float = 10.0) -> None:
    """No lease held by prefill and every decode slot free (the replicas' own accounting)."""
    assert wait_for(lambda: pool_stats(config, "prefill")["num_leases"] == 0, timeout_s), pool_stats(config, "prefill")
    assert wait_for(lambda: pool_stats(config, "decode")["num_free_slots"] == config.decode.num_slots, timeout_s), \
        pool_stats(config, "decode")


HEALTH_CHECK_PERIOD_S = 1.0  # Serve notices a dead pool replica at its next health check (10 s by default)
SHUTDOWN_WAIT_LOOP_S = 0.2   # a stopping replica looks for ongoing requests this often (2 s by default, and it waits
                             # once before the first look: every deleted application and upgraded replica paid it)


def serve_file_for_tests(import_path: str = APP_IMPORT_PATH, env_vars: dict[str, str] | None = None,
                    deployments: list[dict] = ()) -> dict:
    """The Ray Serve config the tests deploy with: the pools health-checked every HEALTH_CHECK_PERIOD_S (so a
    killed replica is replaced at once), replicas that stop as soon as they are drained, `deployments` options on
    top, and `env_vars` for the application's processes (the cluster is up already: its environment is the
    session's)."""
    options = {name: {"name": name, "graceful_shutdown_wait_loop_s": SHUTDOWN_WAIT_LOOP_S}
               for name in ("router", "prefill", "decode")}
    for name in ("prefill", "decode"):
        options[name]["health_check_period_s"] = HEALTH_CHECK_PERIOD_S
    for deployment in deployments:
        options[deployment["name"]] = {**options.get(deployment["name"], {}), **deployment}
    app = {"import_path": import_path, "deployments": list(options.values())}
    if env_vars:
        app["runtime_env"] = {"env_vars": dict(env_vars)}
    return {"applications": [app]}


@contextmanager
def tiny_service(models: tuple[Path, Path], *overrides: str, chaos: bool = False,
                 serve_file: dict | None = None) -> Iterator[dict]:
    """The service on tiny models (`tiny_service_config` plus `overrides`), deployed on the session's Ray cluster
    (started if need be) and deleted afterwards. Yields {"address", "config" (with its resolved secret), "engine"
    (the in-process reference), "full_dir"}. `chaos`: the pools run the fault-injecting servers of
    tests/faults/chaos.py (a test arms faults per request). `serve_file`: the Serve config (serve_file_for_tests()'s by
    default), its application's import_path chosen by `chaos`."""
    from services.app import start_service
    from tests.faults.chaos import CHAOS_IMPORT_PATH, board

    full_dir, decoder_dir = models
    import_path = CHAOS_IMPORT_PATH if chaos else APP_IMPORT_PATH
    serve_file = serve_file or serve_file_for_tests()
    for app in serve_file["applications"]:
        app["import_path"] = import_path
    session_ray()
    config = start_service(tiny_service_config(full_dir, decoder_dir, *overrides), serve_file=serve_file,
                           import_path=import_path)
    if chaos:
        board()  # where the tests arm faults and the chaos servers look them up
    try:
        yield {"address": f"127.0.0.1:{config.server.grpc_port}", "config": config, "full_dir": full_dir,
               "engine": reference_engine(full_dir, decoder_dir)}
    finally:
        delete_service(config)


def delete_service(config: ServiceConfig) -> None:
    """Delete the application (its replicas stop; Ray and Serve stay up for the next module) and its TLS front."""
    from ray import serve

    from services import tls_front

    tls_front.stop()
    serve.delete(config.server.app_name)


@functools.cache
def reference_engine(full_dir: Path, decoder_dir: Path):
    """The in-process engine on the same tiny models (loaded once per session)."""
    from overfill.engine.loader import load_engine

    return load_engine(str(full_dir), str(decoder_dir), ["overfill"])


EIGHT_PROMPTS = [f"{word} is a word" for word in ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel"]]


def concurrent_greedy(address: str, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """The token ids the service streams for each prompt, all requests in flight at once."""
    import asyncio

    from overfill.client import AsyncOverFillClient

    async def run():
        async with AsyncOverFillClient(address) as client:
            async def one(prompt):
                return [t async for piece in client.generate(prompt, max_tokens=max_tokens) for t in piece.token_ids]
            return await asyncio.gather(*(one(p) for p in prompts))

    return asyncio.run(run())


def in_process(service: dict, prompt: str | list[int], max_tokens: int) -> list[int]:
    """Greedy OverFill tokens of the in-process engine: what the service must stream for the same prompt."""
    from overfill.engine.sampling import SamplingParams

    loaded = service["engine"]
    ids = loaded.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
    return loaded.engine.generate([ids], SamplingParams(max_new_tokens=max_tokens), "overfill")[0].token_ids

"""Shared by the tests that start the service on a local Ray cluster: tiny models on disk, a config with free ports,
waiting for a condition, and the leak check every service test ends with."""

from __future__ import annotations

import functools
import json
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
    settings given the same port make a config invalid)."""
    ports = ports_outside_the_ephemeral_range()
    while True:
        port = _port_picker.randrange(ports.start, ports.stop)
        if port in _ports_handed_out:
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


def tiny_service_config(full_dir: Path, decoder_dir: Path, *overrides: str) -> ServiceConfig:
    """Small limits, a quarter CPU per replica, free ports and no API keys (auth.enabled=false: the ingress tests
    turn it on); later overrides win."""
    return load_config(None, [
        "auth.enabled=false",
        f"models.full={full_dir}", f"models.decoder={decoder_dir}", f"server.grpc_port={free_port()}",
        f"server.http_port={free_port()}", f"server.metrics_port={free_port()}", "server.max_context_tokens=256",
        "server.max_tokens_limit=64", "server.default_max_tokens=16", "decode.num_slots=4", "decode.max_waiting=16",
        "prefill.num_cpus=0.25", "decode.num_cpus=0.25", "server.num_cpus=0.25", *overrides,
    ])


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


@contextmanager
def tiny_service(root: Path, *overrides: str, chaos: bool = False) -> Iterator[dict]:
    """The service on tiny models (`tiny_service_config` plus `overrides`) on a local Ray cluster of 2 CPUs, stopped
    afterwards. Yields {"address", "config" (with its resolved secret), "engine" (the in-process reference)}.
    `chaos`: the pools run the fault-injecting servers of tests/faults/chaos.py (a test arms faults per request)."""
    from overfill.engine.loader import load_engine
    from services.app import start_service, stop_service
    from tests.faults.chaos import CHAOS_IMPORT_PATH, board

    full_dir, decoder_dir = build_tiny_models(root)
    import_path = CHAOS_IMPORT_PATH if chaos else APP_IMPORT_PATH
    config = start_service(tiny_service_config(full_dir, decoder_dir, *overrides), ray_init_kwargs={"num_cpus": 2},
                           import_path=import_path)
    if chaos:
        board()  # where the tests arm faults and the chaos servers look them up
    try:
        yield {"address": f"127.0.0.1:{config.server.grpc_port}", "config": config,
               "engine": load_engine(str(full_dir), str(decoder_dir), ["overfill"])}
    finally:
        stop_service()


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

"""Reaching single Ray Serve replicas from a fault test: their actors (to kill one, or read its own accounting),
the pool sizes Serve reports, the leak check over every live replica, and the Prometheus samples per replica.

A replica is the detached actor `SERVE_REPLICA::<app>#<deployment>#<replica id>` in namespace `serve`
(ray/serve/_private/common.py ReplicaID.to_full_id_str); its `record_routing_stats` is an actor method that runs the
deployment's own `record_routing_stats`, i.e. the worker's stats() (what the metrics are refreshed from).
"""

from __future__ import annotations

import re
import urllib.request

import ray
from ray.util import list_named_actors

from overfill.serving.config import ServiceConfig
from tests.service_helpers import wait_for


def replica_actors(app: str, deployment: str) -> dict[str, ray.actor.ActorHandle]:
    """{replica id: actor} for every live replica actor of a deployment."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {entry["name"][len(prefix):]: ray.get_actor(entry["name"], namespace=entry["namespace"])
            for entry in list_named_actors(all_namespaces=True) if entry["name"].startswith(prefix)}


def replica_stats(app: str, deployment: str) -> dict[str, dict]:
    """{replica id: its own stats} for every replica that answers (one still starting or already dying does not)."""
    stats = {}
    for replica_id, actor in replica_actors(app, deployment).items():
        try:
            stats[replica_id] = ray.get(actor.record_routing_stats.remote(), timeout=10)
        except Exception:  # noqa: BLE001  not initialized yet, or stopping
            pass
    return stats


def kill_replica(app: str, deployment: str, replica_id: str) -> None:
    """What a crashed process looks like to everyone else: the actor dies at once, no graceful shutdown."""
    ray.kill(replica_actors(app, deployment)[replica_id], no_restart=True)


def busy_replica(app: str, deployment: str, key: str) -> str:
    """The one replica whose stats show `key` > 0 (the one serving the request a test watches)."""
    busy: list[str] = []

    def found() -> bool:
        busy[:] = [replica for replica, stats in replica_stats(app, deployment).items() if stats[key] > 0]
        return bool(busy)

    assert wait_for(found, 10), f"no {deployment} replica has {key} > 0"
    assert len(busy) == 1, busy
    return busy[0]


def pool_states(app: str, deployment: str) -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications[app].deployments[deployment].replica_states)


def wait_pool_restored(app: str, deployment: str, num_replicas: int, timeout_s: float = 90.0) -> None:
    """Until Serve reports the pool back at its size, every replica RUNNING (a killed one replaced), and each of
    them answers."""
    assert wait_for(lambda: pool_states(app, deployment) == {"RUNNING": num_replicas}
                    and len(replica_stats(app, deployment)) == num_replicas, timeout_s), \
        (pool_states(app, deployment), list(replica_actors(app, deployment)))


def assert_no_kv_anywhere(config: ServiceConfig, timeout_s: float = 15.0) -> None:
    """No lease on any live prefill replica and every slot free on every live decode replica (their own
    accounting); a pool may be short of a replica Serve is still replacing, never empty."""
    app = config.server.app_name

    def clean() -> bool:
        prefill, decode = replica_stats(app, "prefill"), replica_stats(app, "decode")
        return (bool(prefill) and bool(decode) and all(s["num_leases"] == 0 for s in prefill.values())
                and all(s["num_free_slots"] == config.decode.num_slots and s["num_running"] == 0
                        for s in decode.values()))

    assert wait_for(clean, timeout_s), (replica_stats(app, "prefill"), replica_stats(app, "decode"))


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(config: ServiceConfig) -> list[tuple[str, dict[str, str], float]]:
    """The cluster's Prometheus samples: (name, labels, value)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{config.server.metrics_port}/metrics", timeout=5).read()
    except OSError:
        return []
    samples = []
    for line in text.decode().splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def metric(samples, name: str, exclude: set[str] = frozenset(), **labels: str) -> dict[str, float]:
    """{replica id: value} of one metric (summed over other labels), restricted to matching labels, without the
    replicas in `exclude`."""
    values: dict[str, float] = {}
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            replica = sample_labels.get("replica", "")
            if replica not in exclude:
                values[replica] = values.get(replica, 0.0) + value
    return values


def exported_replicas(config: ServiceConfig) -> set[str]:
    """Every replica id the cluster's Prometheus export names now: those of applications deployed before (one Ray
    cluster serves the whole test session, and it may keep exporting what dead replicas last reported)."""
    return {labels["replica"] for _, labels, _ in scrape(config) if labels.get("replica")}

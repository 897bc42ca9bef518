"""What a soak watches on the service besides its own requests: the service's Prometheus gauges (KV cache use per
role, KV leases held, requests running/waiting) and the resident memory of the Ray Serve processes on this machine.

Gauge names are those of services/metrics.py as Prometheus sees them (Ray prefixes `ray_`). A gauge that the
endpoint does not carry is None, never 0; an endpoint that does not answer makes the whole scrape None with the
reason. Processes are found by the titles Ray gives them: `ray::ServeReplica:APP:DEPLOYMENT` (a replica of that
deployment; the title may carry `.method` while it runs one), `ray::ProxyActor` and `ray::ServeController`.

    parse_prometheus(text)          -> [Series]
    scrape_service(url)             -> (ServiceGauges | None, error | None)
    find_service_processes()        -> {role: [pid, ...]}      (empty when none runs here)
    rss_by_role(pids_by_role)       -> {role: MiB}
    cpu_seconds_by_role(pids)       -> {role: CPU seconds so far}
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

KV_USAGE = "ray_overfill_kv_cache_usage_perc"        # Gauge, 0-1, tag role (prefill, decode), one per replica
LEASES = "ray_overfill_kv_leases"                    # Gauge, leases held, one per prefill replica
LEASES_EXPIRED = "ray_overfill_kv_leases_expired"    # Counter (exported as ..._total), leases freed unclaimed
RUNNING = "ray_overfill_num_requests_running"        # Gauge, tag role (router, prefill, decode)
WAITING = "ray_overfill_num_requests_waiting"        # Gauge, tag role (prefill, decode)

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_REPLICA = re.compile(r"^ray::ServeReplica:[^:\s]+:([A-Za-z0-9_\-]+)")
_SERVE_ACTORS = {"ray::ProxyActor": "proxy", "ray::ServeController": "controller"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class Series:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Series]:
    """Samples of the Prometheus text exposition format (comments and blank lines skipped; a timestamp after the
    value is ignored). Raises ValueError naming the line that is not a sample."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ValueError(f"metrics line {number} is not a Prometheus sample: {line[:120]!r}")
        name, label_text, value = match.groups()
        labels, position = {}, 0
        label_text = label_text or ""
        while position < len(label_text):
            label = _LABEL.match(label_text, position)
            if not label:
                raise ValueError(f"metrics line {number}: bad labels {label_text[:120]!r}")
            labels[label.group(1)] = re.sub(r'\\[\\"n]', lambda m: _ESCAPES[m.group(0)], label.group(2))
            position = label.end()
        try:
            out.append(Series(name, labels, float(value)))
        except ValueError as e:
            raise ValueError(f"metrics line {number}: value {value!r} is not a number") from e
    return out


@dataclass
class ServiceGauges:
    """One scrape, summed over replicas. None = the endpoint does not carry that metric (yet)."""
    kv_cache_usage: dict[str, float] | None     # role -> the fullest replica's KV use, 0-1
    leases: float | None                         # KV leases held, all prefill replicas
    leases_expired: float | None                 # leases freed unclaimed since the service started
    running: dict[str, float] | None             # role -> requests in flight (router = the whole service)
    waiting: dict[str, float] | None             # role -> requests queued


def _per_role(series: list[Series], name: str, combine) -> dict[str, float] | None:
    values: dict[str, list[float]] = {}
    for s in series:
        if s.name == name:
            values.setdefault(s.labels.get("role", "?"), []).append(s.value)
    return {role: float(combine(v)) for role, v in sorted(values.items())} or None


def _total(series: list[Series], *names: str) -> float | None:
    values = [s.value for s in series if s.name in names]
    return float(sum(values)) if values else None


def gauges_from(series: list[Series]) -> ServiceGauges:
    expired = _total(series, LEASES_EXPIRED, LEASES_EXPIRED + "_total")
    kv = _per_role(series, KV_USAGE, max)
    if expired is None and kv is not None:
        expired = 0.0  # a Ray counter is exported from its first increment on; the service's gauges are there
    return ServiceGauges(kv, _total(series, LEASES), expired, _per_role(series, RUNNING, sum),
                         _per_role(series, WAITING, sum))


def scrape_service(url: str, timeout_s: float = 3.0) -> tuple[ServiceGauges | None, str | None]:
    """(gauges, None), or (None, why) when the endpoint does not answer, is not Prometheus text, or carries none
    of the service's metrics (e.g. another program's endpoint, or the service has not reported yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", "replace")
        series = parse_prometheus(text)
    except (OSError, ValueError) as e:
        return None, f"{url}: {e}"
    if not any(s.name.startswith("ray_overfill_") for s in series):
        return None, f"{url}: no ray_overfill_* metrics there"
    return gauges_from(series), None


def role_of(title: str) -> str | None:
    """The Serve role of a process from its title (Ray sets it as the command line), or None."""
    replica = _REPLICA.match(title)
    if replica:
        return replica.group(1)
    for prefix, role in _SERVE_ACTORS.items():
        if title == prefix or title.startswith(prefix + ".") or title.startswith(prefix + " "):
            return role
    return None


def find_service_processes() -> dict[str, list[int]]:
    """{role: [pid, ...]} of the Ray Serve processes on this machine (router/prefill/decode replicas by deployment
    name, proxy, controller); {} when none runs here (a remote service, or a server that is not Ray Serve)."""
    import psutil

    found: dict[str, list[int]] = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        role = role_of(" ".join(process.info["cmdline"] or []))
        if role is not None:
            found.setdefault(role, []).append(process.info["pid"])
    return {role: sorted(pids) for role, pids in sorted(found.items())}


def _live_values(pids_by_role: dict[str, list[int]], measure) -> dict[str, list[float]]:
    """{role: [measure(process) for each of its processes still there]}; a process that exited meanwhile (or that
    this user may not read) is left out."""
    import psutil

    out: dict[str, list[float]] = {}
    for role, pids in pids_by_role.items():
        values = out.setdefault(role, [])
        for pid in pids:
            try:
                values.append(measure(psutil.Process(pid)))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return out


def rss_by_role(pids_by_role: dict[str, list[int]]) -> dict[str, float]:
    """{role: resident MiB summed over its processes}; a process that has exited meanwhile is left out (a role
    whose every process exited is left out too)."""
    values = _live_values(pids_by_role, lambda process: process.memory_info().rss)
    return {role: sum(rss) / MIB for role, rss in values.items() if rss}


def cpu_seconds_by_role(pids_by_role: dict[str, list[int]]) -> dict[str, float]:
    """{role: user + system CPU seconds its processes (all their threads) have used so far}; 0 for a role whose
    processes are gone."""
    def cpu(process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    return {role: sum(seconds) for role, seconds in _live_values(pids_by_role, cpu).items()}

"""Soak: steady load (Poisson, or gamma with --burstiness, at --request-rate) for --duration-min minutes while a
sampler thread records, every --sample-every-s, the service's memory and bookkeeping; then a drain (no load) until
leases and KV use are back to 0 or --drain-s has passed; then a verdict.

Each sample (`SoakSampler.take`): time, phase (load / drain), RSS per role in MiB and processes per role (Ray Serve
processes on this machine; null when none is found here), KV cache use per role, KV leases held, leases expired so
far, the service's running and waiting requests (Prometheus; null when the endpoint does not answer), and the
client's requests in flight, sent, completed and failed so far.

The verdict (`soak_verdict`), check by check, each "pass", "fail" or "unavailable" (with the reason):
  errors          no request failed (warm-ups included)
  rss:ROLE        over the second half of the load phase, the least-squares slope of the role's RSS and its
                  last-minus-first (per minute of that window) are both <= --max-rss-growth-mib-per-min. Only the
                  samples with the role's final process count are used: a replica added by the autoscaler is a
                  step, not a leak (the change is reported)
  lease_trend     the least-squares slope of leases held over the load phase is <= --max-lease-growth-per-min
  leases_drained  the last sample of the drain shows 0 leases
  kv_idle         the last sample of the drain shows 0 KV use in every role
  leases_expired  no lease was freed unclaimed during the run (the decode side pulled every KV it was handed)
Overall: "fail" if any check fails, else "incomplete" if any is unavailable, else "pass"; the command exits 0 only
on "pass".
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.arrivals import Stage, stage_send_times
from loadtest.benchmark import Benchmark, Measured
from loadtest.client import Progress
from loadtest.plots import plot_soak
from loadtest.records import RequestRecord
from loadtest.service_watch import find_service_processes, rss_by_role, scrape_service


@dataclass(frozen=True)
class SoakSpec:
    request_rate: float
    duration_min: float
    burstiness: float = 1.0
    seed: int = 0
    sample_every_s: float = 5.0
    metrics_url: str | None = "http://127.0.0.1:8080/metrics"   # None: not scraped (reported unavailable)
    drain_s: float = 60.0
    max_rss_growth_mib_per_min: float = 1.0
    max_lease_growth_per_min: float = 0.1

    def __post_init__(self):
        if not (np.isfinite(self.request_rate) and self.request_rate > 0):
            raise ValueError(f"--request-rate must be a finite rate > 0 for a soak, got {self.request_rate}")
        if not (np.isfinite(self.duration_min) and self.duration_min > 0):
            raise ValueError(f"--duration-min must be > 0, got {self.duration_min}")
        if not self.sample_every_s > 0:
            raise ValueError(f"--sample-every-s must be > 0, got {self.sample_every_s}")
        if not self.drain_s >= 0:
            raise ValueError(f"--drain-s must be >= 0, got {self.drain_s}")
        if not self.max_rss_growth_mib_per_min >= 0:
            raise ValueError(f"--max-rss-growth-mib-per-min must be >= 0, got {self.max_rss_growth_mib_per_min}")
        if not self.max_lease_growth_per_min >= 0:
            raise ValueError(f"--max-lease-growth-per-min must be >= 0, got {self.max_lease_growth_per_min}")


class SoakSampler(threading.Thread):
    """Takes a sample every `every_s` from `attach` (the run's clock start) until `stop`; blocking I/O (HTTP scrape,
    /proc reads) stays off the load generator's event loop. Reads the run's live counters without locks: they are
    plain ints written by one thread."""

    def __init__(self, every_s: float, metrics_url: str | None, find_processes=None):
        super().__init__(name="soak-sampler", daemon=True)
        self.every_s, self.metrics_url = every_s, metrics_url
        self.find_processes = find_processes or find_service_processes
        self.samples: list[dict] = []
        self.phase = "load"
        self.progress: Progress | None = None
        self.origin = 0.0
        self._wake, self._stopping, self.idle = threading.Event(), threading.Event(), threading.Event()
        self.drain_sampled = threading.Event()

    def attach(self, progress: Progress, origin: float) -> None:
        """RunSpec.on_start: the measured run's counters and clock (perf_counter at its start)."""
        self.progress, self.origin = progress, origin
        self.start()

    def run(self) -> None:
        tick = 1
        while not self._stopping.is_set():
            self._wake.wait(timeout=max(0.0, self.origin + tick * self.every_s - time.perf_counter()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            sample = self.take()
            self.samples.append(sample)
            if sample["phase"] == "drain":
                self.drain_sampled.set()
                if len(self.samples) >= 2 and all(s["phase"] == "drain" and is_idle(s) for s in self.samples[-2:]):
                    self.idle.set()
            tick = max(tick + 1, int((time.perf_counter() - self.origin) / self.every_s) + 1)

    def take(self) -> dict:
        phase = self.phase
        pids = self.find_processes()
        rss = rss_by_role(pids) if pids else {}
        gauges, error = scrape_service(self.metrics_url) if self.metrics_url else (None, "--metrics-url none")
        progress = self.progress
        return {
            "time_s": round(time.perf_counter() - self.origin, 3), "phase": phase,
            "rss_mib": {role: round(mib, 2) for role, mib in rss.items()} or None,
            "processes": {role: len(p) for role, p in pids.items()} or None,
            "kv_cache_usage": gauges.kv_cache_usage if gauges else None,
            "leases": gauges.leases if gauges else None,
            "leases_expired": gauges.leases_expired if gauges else None,
            "service_running": gauges.running if gauges else None,
            "service_waiting": gauges.waiting if gauges else None,
            "metrics_error": error,
            "in_flight": progress.in_flight, "sent": progress.sent, "completed": progress.completed,
            "failed": progress.failed,
        }

    def drain(self, max_s: float) -> None:
        """The load is over: sample at once, then until two samples in a row are idle or `max_s` has passed."""
        start = time.perf_counter()
        self.phase = "drain"
        self._wake.set()
        self.drain_sampled.wait(timeout=max(max_s, 30.0))
        self.idle.wait(timeout=max(0.0, max_s - (time.perf_counter() - start)))

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.join(timeout=30)


def is_idle(sample: dict) -> bool:
    kv = sample["kv_cache_usage"]
    return sample["leases"] == 0 and kv is not None and all(v == 0 for v in kv.values())


# --- verdict -------------------------------------------------------------------------------------------------------

def slope_per_min(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of values against time, per minute."""
    return float(np.polyfit(np.asarray(times_s) / 60.0, np.asarray(values, dtype=float), 1)[0])


def _check(name: str, status: str, detail: str, **numbers) -> dict:
    return {"name": name, "status": status, "detail": detail, **numbers}


def rss_checks(load: list[dict], max_growth: float) -> list[dict]:
    """One check per role over the second half of the load phase (see the module docstring)."""
    with_rss = [s for s in load if s["rss_mib"]]
    if not with_rss:
        return [_check("rss", "unavailable", "no Ray Serve process of the service found on this machine "
                                             "(a remote service, or not Ray Serve): RSS not measured")]
    half = load[-1]["time_s"] / 2
    window = [s for s in with_rss if s["time_s"] >= half]
    checks = []
    for role in sorted({r for s in with_rss for r in s["rss_mib"]}):
        points = [s for s in window if role in s["rss_mib"]]
        if not points:
            checks.append(_check(f"rss:{role}", "unavailable", "no sample in the second half of the load"))
            continue
        final = points[-1]["processes"][role]
        counts = sorted({s["processes"][role] for s in points})
        same = [s for s in points if s["processes"][role] == final]
        note = f"; processes changed {counts} in the window, using the {len(same)} samples with {final}" \
            if len(counts) > 1 else ""
        if len(same) < 3:
            checks.append(_check(f"rss:{role}", "unavailable", f"{len(same)} samples in the second half (need 3)"
                                 + note))
            continue
        times, mib = [s["time_s"] for s in same], [s["rss_mib"][role] for s in same]
        span_min = (times[-1] - times[0]) / 60.0
        slope = slope_per_min(times, mib)
        delta = mib[-1] - mib[0]
        ok = slope <= max_growth and delta / span_min <= max_growth
        checks.append(_check(f"rss:{role}", "pass" if ok else "fail",
                             f"slope {slope:+.3f} MiB/min, last-first {delta:+.1f} MiB over {span_min:.1f} min "
                             f"(limit {max_growth:g} MiB/min){note}",
                             slope_mib_per_min=slope, delta_mib=delta, window_min=span_min,
                             first_mib=mib[0], last_mib=mib[-1]))
    return checks


def soak_verdict(samples: list[dict], failed: int, warmup_failures: int, max_rss_growth_mib_per_min: float = 1.0,
                 max_lease_growth_per_min: float = 0.1) -> dict:
    """{"verdict": pass|fail|incomplete, "checks": [...]} from the samples (dicts as SoakSampler.take makes them)."""
    load = [s for s in samples if s["phase"] == "load"]
    drain = [s for s in samples if s["phase"] == "drain"]
    errors = failed + warmup_failures
    checks = [_check("errors", "pass" if errors == 0 else "fail",
                     f"{failed} failed requests, {warmup_failures} failed warm-ups", failed=errors)]
    checks += rss_checks(load, max_rss_growth_mib_per_min) if load else [
        _check("rss", "unavailable", "no sample during the load")]

    # Leases and KV come from the metrics endpoint; a sample without them is skipped, never read as 0.
    why = next((s["metrics_error"] for s in reversed(samples) if s["metrics_error"]), "no sample")
    leases = [s for s in load if s["leases"] is not None]
    if len(leases) >= 3:
        slope = slope_per_min([s["time_s"] for s in leases], [s["leases"] for s in leases])
        checks.append(_check("lease_trend", "pass" if slope <= max_lease_growth_per_min else "fail",
                             f"slope {slope:+.3f} leases/min over the load, max {max(s['leases'] for s in leases):g}"
                             f" (limit {max_lease_growth_per_min:g}/min)", slope_per_min=slope))
    else:
        checks.append(_check("lease_trend", "unavailable", f"{len(leases)} lease samples during the load ({why})"))
    last_leases = next((s for s in reversed(drain) if s["leases"] is not None), None)
    if last_leases is None:
        checks.append(_check("leases_drained", "unavailable", f"no lease sample after the load ({why})"))
    else:
        checks.append(_check("leases_drained", "pass" if last_leases["leases"] == 0 else "fail",
                             f"{last_leases['leases']:g} leases held at {last_leases['time_s']:.0f} s, after the load"))
    last_kv = next((s for s in reversed(drain) if s["kv_cache_usage"] is not None), None)
    if last_kv is None:
        checks.append(_check("kv_idle", "unavailable", f"no KV sample after the load ({why})"))
    else:
        busy = {role: v for role, v in last_kv["kv_cache_usage"].items() if v != 0}
        checks.append(_check("kv_idle", "fail" if busy else "pass",
                             f"KV use at {last_kv['time_s']:.0f} s, after the load: {last_kv['kv_cache_usage']}"))
    expired = [s["leases_expired"] for s in samples if s["leases_expired"] is not None]
    if len(expired) >= 2:
        grew = expired[-1] - expired[0]
        checks.append(_check("leases_expired", "pass" if grew == 0 else "fail",
                             f"{grew:g} leases freed unclaimed during the run", expired=grew))
    else:
        checks.append(_check("leases_expired", "unavailable", f"{len(expired)} samples of the counter ({why})"))

    statuses = {c["status"] for c in checks}
    verdict = "fail" if "fail" in statuses else "incomplete" if "unavailable" in statuses else "pass"
    return {"verdict": verdict, "checks": checks}


# --- the run -------------------------------------------------------------------------------------------------------

def latency_per_minute(records: list[RequestRecord]) -> list[dict]:
    """Per minute of send time: requests sent and failed, p50 TTFT and TPOT (ms) of the successful ones."""
    if not records:
        return []
    out = []
    for minute in range(int(max(r.send_s for r in records) // 60) + 1):
        sent = [r for r in records if minute * 60 <= r.send_s < (minute + 1) * 60]
        ok = [r for r in sent if r.success]
        tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
        out.append({"minute": minute, "sent": len(sent), "failed": len(sent) - len(ok),
                    "p50_ttft_ms": float(np.median([r.ttft_s for r in ok])) * 1000 if ok else None,
                    "p50_tpot_ms": float(np.median(tpots)) * 1000 if tpots else None})
    return out


@dataclass
class SoakOutcome:
    spec: SoakSpec
    measured: Measured
    samples: list[dict]
    processes_found: dict[str, int]      # role -> most processes seen at once ({} = none on this machine)
    per_minute: list[dict]
    verdict: dict


def run_soak(bench: Benchmark, spec: SoakSpec, find_processes=None) -> SoakOutcome:
    """`find_processes() -> {role: [pid]}` defaults to the Ray Serve processes on this machine."""
    # 1) Arrivals for the whole duration (a Poisson count at the rate), the requests for them.
    duration_s = spec.duration_min * 60.0
    times, _ = stage_send_times([Stage(spec.request_rate, duration_s)], spec.burstiness, spec.seed)
    if len(times) == 0:
        raise ValueError(f"--duration-min {spec.duration_min} at --request-rate {spec.request_rate}: no request "
                         "would be sent")
    # 2) Load, sampled from the clock's start; 3) drain: sampled until idle or --drain-s.
    sampler = SoakSampler(spec.sample_every_s, spec.metrics_url, find_processes)
    setup = {"request_rate": spec.request_rate, "burstiness": spec.burstiness}
    try:
        measured = bench.run(bench.samples(len(times), spec.seed), times, setup, min_duration_s=duration_s,
                             on_start=sampler.attach)
        sampler.drain(spec.drain_s)
    finally:
        if sampler.is_alive():
            sampler.stop()
    # 4) Verdict.
    samples = sampler.samples
    found: dict[str, int] = {}
    for s in samples:
        for role, n in (s["processes"] or {}).items():
            found[role] = max(found.get(role, 0), n)
    verdict = soak_verdict(samples, measured.metrics.failed, measured.run.warmup_failures,
                           spec.max_rss_growth_mib_per_min, spec.max_lease_growth_per_min)
    return SoakOutcome(spec, measured, samples, found, latency_per_minute(measured.run.records), verdict)


def soak_json(outcome: SoakOutcome) -> dict:
    spec = outcome.spec
    return {**outcome.measured.result, "kind": "soak", "soak": {
        "duration_min": spec.duration_min, "sample_every_s": spec.sample_every_s, "metrics_url": spec.metrics_url,
        "drain_s": spec.drain_s, "max_rss_growth_mib_per_min": spec.max_rss_growth_mib_per_min,
        "max_lease_growth_per_min": spec.max_lease_growth_per_min, "processes_found": outcome.processes_found,
        "latency_per_minute": outcome.per_minute, "samples": outcome.samples, **outcome.verdict}}


def save_soak(outcome: SoakOutcome, result_dir: str | Path | None) -> list[Path]:
    """soak-DATE.json and soak-DATE.png (RSS per role, KV use, leases, latency per minute over time)."""
    directory = Path(result_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"soak-{outcome.measured.result['date']}"
    data = soak_json(outcome)
    png = plot_soak(outcome.samples, outcome.per_minute, stem.with_suffix(".png"))
    data["plots"] = [png.name]
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return [stem.with_suffix(".json"), png]


def format_soak(outcome: SoakOutcome) -> str:
    result, spec = outcome.measured.result, outcome.spec
    found = ", ".join(f"{role} x{n}" for role, n in outcome.processes_found.items())
    metrics = sum(1 for s in outcome.samples if s["metrics_error"] is None)
    lines = [f"soak: {spec.request_rate:g} req/s for {spec.duration_min:g} min: {result['completed']} completed, "
             f"{result['failed']} failed; p50 TTFT {result['median_ttft_ms']:.1f} ms, p50 TPOT "
             f"{result['median_tpot_ms']:.1f} ms",
             f"{len(outcome.samples)} samples every {spec.sample_every_s:g} s; service processes on this machine: "
             f"{found or 'none found (RSS not measured)'}; metrics {spec.metrics_url}: "
             f"{metrics} of {len(outcome.samples)} scrapes answered"
             + ("" if metrics else f" ({next((s['metrics_error'] for s in outcome.samples), 'no sample')})")]
    for check in outcome.verdict["checks"]:
        lines.append(f"  {check['status'].upper():<11} {check['name']:<16} {check['detail']}")
    lines.append(f"verdict: {outcome.verdict['verdict'].upper()}")
    return "\n".join(lines)

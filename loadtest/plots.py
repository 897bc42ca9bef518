"""PNG figures for sweeps and step loads (matplotlib, Agg backend; one function per figure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtest.records import RequestRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attainment(points: list[tuple[float, float]], target_pct: float, max_rate: float | None,
                    path: Path) -> Path:
    """SLO attainment (%) against request rate, the target line, and the highest rate meeting it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rates, attainment = zip(*points)
    ax.plot(rates, attainment, "o-", label="SLO attainment")
    ax.axhline(target_pct, color="gray", linestyle="--", label=f"target {target_pct:g}%")
    if max_rate is not None:
        ax.axvline(max_rate, color="green", linestyle=":", label=f"max rate meeting SLOs: {max_rate:g} req/s")
    ax.set(xlabel="request rate (req/s)", ylabel="requests meeting every SLO (%)", ylim=(0, 105),
           title="SLO attainment vs request rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cdf(ax, values_ms: list[float], label: str) -> None:
    if values_ms:
        x = np.sort(values_ms)
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=label)


def plot_latency_cdfs(runs: list[tuple[str, list[RequestRecord]]], path: Path) -> Path:
    """CDFs of TTFT, TPOT and E2EL (successful requests), one line per run (e.g. per rate)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, records in runs:
        ok = [r for r in records if r.success]
        _cdf(axes[0], [r.ttft_s * 1000 for r in ok], label)
        _cdf(axes[1], [r.tpot_s * 1000 for r in ok if r.tpot_s is not None], label)
        _cdf(axes[2], [r.e2el_s * 1000 for r in ok], label)
    for ax, name in zip(axes, ("TTFT", "TPOT", "E2EL")):
        ax.set(xlabel=f"{name} (ms)", ylabel="fraction of requests", title=f"{name} CDF", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_over_time(runs: list[tuple[str, list[RequestRecord]]], path: Path) -> Path:
    """TTFT at each request's send time and ITL at each chunk's arrival, over each run's own clock."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label, records in runs:
        ok = [r for r in records if r.success]
        axes[0].scatter([r.send_s for r in ok], [r.ttft_s * 1000 for r in ok], s=6, label=label)
        times = [t for r in ok for t in r.chunk_times_s[1:]]
        gaps = [g * 1000 for r in ok for g in r.itls_s]
        axes[1].scatter(times, gaps, s=2, label=label)
    axes[0].set(ylabel="TTFT (ms)", title="TTFT by send time")
    axes[1].set(xlabel="time since the run started (s)", ylabel="ITL (ms)", title="ITL by chunk arrival")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_step(time_series: list[dict], windows: list[dict], stage_bounds: list[tuple[float, float, float]],
              path: Path) -> Path:
    """Step load over time: offered and completed rate, latency percentiles per window, output tokens/s and
    concurrency, and running replicas per pool (when the service reports them)."""
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    t = [s["time_s"] for s in time_series]
    # 1) Load: stage rates (the target), sent and completed per second.
    for start, end, rate in stage_bounds:
        axes[0].hlines(rate, start, end, colors="black", linestyles="--")
    axes[0].plot(t, [s["sent_per_s"] for s in time_series], label="sent/s")
    axes[0].plot(t, [s["completed_per_s"] for s in time_series], label="completed/s")
    axes[0].set(ylabel="requests/s", title="Step load (dashed: stage rate)")
    # 2) Latency per window (by send time for TTFT/E2EL, by arrival for ITL).
    mid = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
    for key, label in (("p50_ttft_ms", "TTFT p50"), ("p90_ttft_ms", "TTFT p90"), ("p50_itl_ms", "ITL p50"),
                       ("p90_itl_ms", "ITL p90")):
        axes[1].plot(mid, [w[key] for w in windows], "o-", markersize=3, label=label)
    axes[1].set(ylabel="ms", title="Latency per window")
    axes[1].set_yscale("log")
    # 3) Throughput and concurrency.
    axes[2].plot(t, [s["output_tokens_per_s"] for s in time_series], label="output tokens/s")
    twin = axes[2].twinx()
    twin.plot(t, [s["concurrency"] for s in time_series], color="gray", label="in flight")
    twin.set_ylabel("requests in flight")
    axes[2].set(ylabel="tokens/s", title="Throughput and concurrency")
    # 4) Replicas per pool.
    pools = sorted({p for s in time_series if s["replicas"] for p in s["replicas"]})
    for pool in pools:
        axes[3].step(t, [s["replicas"].get(pool) if s["replicas"] else np.nan for s in time_series], where="post",
                     label=pool)
    axes[3].set(xlabel="time since the start (s)", ylabel="running replicas",
                title="Replicas per pool" if pools else "Replicas per pool (not reported by the service)")
    return _finish(fig, axes, path)


def _finish(fig, axes, path: Path) -> Path:
    """Grid and legends on every panel, then save the figure and free it."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_soak(samples: list[dict], per_minute: list[dict], path: Path) -> Path:
    """Soak over time: RSS per role, KV cache use per role, leases held (and requests in flight), and p50 TTFT/TPOT
    per minute. A panel whose data the service did not give says so in its title; missing points are gaps, not 0."""
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    t = [s["time_s"] / 60 for s in samples]
    drain = next((s["time_s"] / 60 for s in samples if s["phase"] == "drain"), None)

    def lines(ax, key: str, scale: float = 1.0) -> bool:
        roles = sorted({r for s in samples if s[key] for r in s[key]})
        for role in roles:
            ax.plot(t, [s[key][role] * scale if s[key] and role in s[key] else np.nan for s in samples],
                    ".-", markersize=3, label=role)
        return bool(roles)

    # 1) RSS per role; 2) KV use per role.
    rss = lines(axes[0], "rss_mib")
    axes[0].set(ylabel="MiB", title="RSS per role" if rss else "RSS per role (no service process on this machine)")
    kv = lines(axes[1], "kv_cache_usage", 100.0)
    axes[1].set(ylabel="% of KV slots", title="KV cache use per role (fullest replica)" if kv else
                "KV cache use (metrics endpoint unavailable)")
    # 3) Leases held, and the client's requests in flight.
    leases = [np.nan if s["leases"] is None else s["leases"] for s in samples]
    axes[2].plot(t, leases, ".-", markersize=3, label="KV leases held")
    axes[2].plot(t, [s["in_flight"] for s in samples], color="gray", alpha=0.6, label="requests in flight (client)")
    axes[2].set(ylabel="count", title="Leases and requests in flight" if any(s["leases"] is not None
                                                                             for s in samples)
                else "Requests in flight (leases: metrics endpoint unavailable)")
    # 4) Latency per minute of send time.
    mid = [m["minute"] + 0.5 for m in per_minute]
    for key, label in (("p50_ttft_ms", "TTFT p50"), ("p50_tpot_ms", "TPOT p50")):
        axes[3].plot(mid, [np.nan if m[key] is None else m[key] for m in per_minute], "o-", markersize=3,
                     label=label)
    axes[3].set(xlabel="minutes since the start", ylabel="ms", title="Latency per minute (by send time)")
    for ax in axes:
        if drain is not None:
            ax.axvline(drain, color="black", linestyle=":", linewidth=1)
    return _finish(fig, axes, path)

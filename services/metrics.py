"""Prometheus metrics (docs/architecture.md, "Metrics"), through `ray.serve.metrics` (Ray exports them on its
metrics port, default 8080 here; Prometheus sees them prefixed `ray_`). Ray Serve adds deployment/replica/application
tags; we add `model_name` (the served model's id, as the HTTP API names it, on every metric: what vLLM-style
dashboards group by; deploy/prometheus-vllm-rules.yaml) and `role`.

Each replica builds the instruments of its role once. Gauges are refreshed from the workers' own accounting whenever
Ray polls the replica's routing stats (every 0.5 s), so the numbers are the ones the leak checks use.
GPU gauges come from NVML and exist only where a GPU does (absent, not zero, on CPU).
"""

from __future__ import annotations

import logging

from ray.serve.metrics import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
ITL_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5]


def served_model_name(config) -> str:
    """The model id the service answers as: server.served_model_name, else models.full."""
    return config.server.served_model_name or config.models.full


def _labelled(metric, model_name: str, role: str | None = None):
    metric.set_default_tags({"model_name": model_name, **({"role": role} if role else {})})
    return metric


class RouterMetrics:
    """Per request, observed in the router (the only place that sees a request from arrival to last token)."""

    def __init__(self, model_name: str):
        def labelled(metric, role: str | None = None):
            return _labelled(metric, model_name, role)

        self.ttft = labelled(Histogram("overfill_time_to_first_token_seconds", "Request arrival to first token.",
                                       LATENCY_BUCKETS_S, tag_keys=("model_name",)))
        self.itl = labelled(Histogram("overfill_inter_token_latency_seconds", "Gap between streamed chunks.",
                                      ITL_BUCKETS_S, tag_keys=("model_name",)))
        self.e2e = labelled(Histogram("overfill_e2e_request_latency_seconds", "Request arrival to last token.",
                                      LATENCY_BUCKETS_S, tag_keys=("model_name",)))
        self.prompt_tokens = labelled(Counter("overfill_prompt_tokens", "Prompt tokens of finished requests.",
                                              tag_keys=("model_name",)))
        self.generation_tokens = labelled(Counter("overfill_generation_tokens",
                                                  "Generated tokens of finished requests.", tag_keys=("model_name",)))
        self.requests = labelled(Counter("overfill_requests", "Finished requests by gRPC status.",
                                         tag_keys=("status", "model_name")))
        self.migrations = labelled(Counter(
            "overfill_requests_migrated", "Requests continued on another decode replica after theirs died mid-stream.",
            tag_keys=("model_name",)))
        self.decode_admission_retries = labelled(Counter(
            "overfill_decode_admission_retries", "Decode calls made again after a replica refused the request at "
            "admission (full, or held by a step), with the replicas that refused ranked last.",
            tag_keys=("model_name",)))
        self.auth_rejections = labelled(Counter(
            "overfill_auth_rejections", "Requests refused UNAUTHENTICATED, by reason (missing, malformed, invalid "
            "API key).", tag_keys=("reason", "model_name")))
        self.running = labelled(Gauge("overfill_num_requests_running", "Requests in flight.",
                                      tag_keys=("role", "model_name")), "router")

    def finished(self, status: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests.inc(1, tags={"status": status})
        if status == "OK":
            self.prompt_tokens.inc(prompt_tokens)
            self.generation_tokens.inc(completion_tokens)


class PoolMetrics:
    """Queue and KV gauges of a prefill or decode replica, refreshed from its worker's stats."""

    def __init__(self, role: str, model_name: str):
        self.role, self.model_name = role, model_name
        keys = ("role", "model_name")
        self.running = _labelled(Gauge("overfill_num_requests_running", "Requests in flight.", tag_keys=keys),
                                 model_name, role)
        self.waiting = _labelled(Gauge("overfill_num_requests_waiting", "Requests queued.", tag_keys=keys),
                                 model_name, role)
        self.kv_usage = _labelled(Gauge("overfill_kv_cache_usage_perc", "KV slots in use, 0-1.", tag_keys=keys),
                                  model_name, role)
        self.gpu = GpuGauges(model_name)

    def refresh(self, stats: dict) -> None:
        self.running.set(stats.get("num_running", 0))
        self.waiting.set(stats.get("num_waiting", 0))
        if "kv_cache_usage" in stats:
            self.kv_usage.set(stats["kv_cache_usage"])
        self.gpu.refresh()


class PrefillMetrics(PoolMetrics):
    def __init__(self, model_name: str):
        super().__init__("prefill", model_name)
        self.leases_expired = _labelled(Counter("overfill_kv_leases_expired", "Prefill KV leases freed unclaimed.",
                                                tag_keys=("model_name",)), model_name)
        self.leases = _labelled(Gauge("overfill_kv_leases", "Prefill KV leases held.", tag_keys=("model_name",)),
                                model_name)
        self._expired_seen = 0

    def refresh(self, stats: dict) -> None:
        super().refresh(stats)
        self.leases.set(stats.get("num_leases", 0))
        expired = stats.get("leases_expired", 0)
        if expired > self._expired_seen:
            self.leases_expired.inc(expired - self._expired_seen)
            self._expired_seen = expired


class DecodeMetrics(PoolMetrics):
    def __init__(self, model_name: str):
        super().__init__("decode", model_name)
        self.kv_transfer = _labelled(Histogram("overfill_kv_transfer_seconds", "KV pull from prefill to decode.",
                                               LATENCY_BUCKETS_S, tag_keys=("model_name",)), model_name)
        self.kv_bytes = _labelled(Counter("overfill_kv_transfer_bytes", "KV bytes pulled from prefill.",
                                          tag_keys=("model_name",)), model_name)

    def transferred(self, seconds: float, num_bytes: int) -> None:
        self.kv_transfer.observe(seconds)
        self.kv_bytes.inc(num_bytes)


class GpuGauges:
    """NVML memory, utilization and power per GPU; no instruments at all when NVML finds no GPU."""

    def __init__(self, model_name: str):
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001  no driver, no GPU: the gauges stay absent
            return
        if self.handles:
            keys = ("gpu", "model_name")
            self.memory = _labelled(Gauge("overfill_gpu_memory_used_bytes", "GPU memory used.", tag_keys=keys),
                                    model_name)
            self.utilization = _labelled(Gauge("overfill_gpu_utilization_perc", "GPU utilization, 0-1.",
                                               tag_keys=keys), model_name)
            self.power = _labelled(Gauge("overfill_gpu_power_watts", "GPU power draw.", tag_keys=keys), model_name)

    def refresh(self) -> None:
        if not self.handles:
            return
        import pynvml

        for index, handle in enumerate(self.handles):
            tags = {"gpu": str(index)}
            try:
                self.memory.set(pynvml.nvmlDeviceGetMemoryInfo(handle).used, tags=tags)
                self.utilization.set(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100, tags=tags)
                self.power.set(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, tags=tags)
            except Exception as e:  # noqa: BLE001  a GPU that stops answering must not break routing stats
                log.warning("NVML read of GPU %d failed: %s", index, e)

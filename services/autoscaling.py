"""Autoscaling policies per pool (DistServe style: each pool scales on its own signal), plus an application-level
policy that also keeps the decode:prefill replica ratio in bounds.

Ray Serve 2.60 calls a policy once per control loop with an `AutoscalingContext`; `ctx.aggregated_metrics` holds what
each replica's `record_autoscaling_stats()` returned, averaged over `look_back_period_s`:
    {"queued_prompt_tokens": {replica_id: tokens}, ...}    prefill replicas
    {"kv_demand": {replica_id: (running + waiting) / slots}} decode replicas
A policy returns (desired replicas, policy state); Serve then applies min/max replicas, the up/down-scaling factors
and delays of the deployment's `autoscaling_config`. Wire them in a Ray Serve config (see deploy/*.yaml):

    autoscaling_config:
      policy: {policy_function: services.autoscaling:PrefillQueuedTokensPolicy,
               policy_kwargs: {target_queued_tokens: 2048}}
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

PREFILL_METRIC = "queued_prompt_tokens"
DECODE_METRIC = "kv_demand"


def replicas_for(total_demand: float, target_per_replica: float) -> float:
    """Replicas needed so that each carries `target_per_replica` of the demand (at least one while there is any)."""
    if total_demand <= 0:
        return 0.0
    return max(1.0, total_demand / target_per_replica)


def _summed(ctx, metric: str) -> float | None:
    """The metric summed over the running replicas, None when no replica has reported it yet."""
    per_replica = (ctx.aggregated_metrics or {}).get(metric) or {}
    return sum(per_replica.values()) if per_replica else None


class PrefillQueuedTokensPolicy:
    """Prefill pool: enough replicas that each holds about `target_queued_tokens` prompt tokens queued (the queue
    is what TTFT waits on). Before any replica reports, Ray Serve's ongoing-requests policy decides."""

    def __init__(self, target_queued_tokens: float = 4096.0):
        if target_queued_tokens <= 0:
            raise ValueError(f"target_queued_tokens must be > 0, got {target_queued_tokens}")
        self.target_queued_tokens = float(target_queued_tokens)

    def __call__(self, ctx) -> tuple[float, dict[str, Any]]:
        queued = _summed(ctx, PREFILL_METRIC)
        if queued is None:
            return replica_queue_length_autoscaling_policy(ctx)
        return replicas_for(queued, self.target_queued_tokens), {}


class DecodeKVDemandPolicy:
    """Decode pool: enough replicas that KV demand per replica ((running + waiting sequences) / slots, so a full
    replica with a queue reads above 1) stays near `target_kv_usage`."""

    def __init__(self, target_kv_usage: float = 0.75):
        if not 0 < target_kv_usage <= 1:
            raise ValueError(f"target_kv_usage must be in (0, 1], got {target_kv_usage}")
        self.target_kv_usage = float(target_kv_usage)

    def __call__(self, ctx) -> tuple[float, dict[str, Any]]:
        demand = _summed(ctx, DECODE_METRIC)
        if demand is None:
            return replica_queue_length_autoscaling_policy(ctx)
        return replicas_for(demand, self.target_kv_usage), {}


def bounded_ratio(num_prefill: int, num_decode: int, min_decode_per_prefill: float,
                  max_decode_per_prefill: float) -> tuple[int, int]:
    """Raise whichever pool is short so that min <= decode/prefill <= max; never lowers a pool (scaling down one
    pool must not starve the other)."""
    num_prefill, num_decode = max(1, num_prefill), max(1, num_decode)
    num_decode = max(num_decode, math.ceil(min_decode_per_prefill * num_prefill - 1e-9))
    num_prefill = max(num_prefill, math.ceil(num_decode / max_decode_per_prefill - 1e-9))
    return num_prefill, num_decode


class PDRatioPolicy:
    """Application-level policy: each pool's own signal (the two policies above), then the decode:prefill ratio
    kept within [min_decode_per_prefill, max_decode_per_prefill]. Other deployments (the router) use Ray Serve's
    ongoing-requests policy. Configured as the application's `autoscaling_policy`."""

    def __init__(self, prefill_deployment: str = "prefill", decode_deployment: str = "decode",
                 target_queued_tokens: float = 4096.0, target_kv_usage: float = 0.75,
                 min_decode_per_prefill: float = 0.5, max_decode_per_prefill: float = 4.0):
        if not 0 < min_decode_per_prefill <= max_decode_per_prefill:
            raise ValueError("need 0 < min_decode_per_prefill <= max_decode_per_prefill, got "
                             f"{min_decode_per_prefill} and {max_decode_per_prefill}")
        self.prefill_deployment, self.decode_deployment = prefill_deployment, decode_deployment
        self.prefill_policy = PrefillQueuedTokensPolicy(target_queued_tokens)
        self.decode_policy = DecodeKVDemandPolicy(target_kv_usage)
        self.min_ratio, self.max_ratio = min_decode_per_prefill, max_decode_per_prefill

    def __call__(self, contexts: dict) -> tuple[dict, dict]:
        desired: dict = {}
        by_name = {}
        for deployment_id, ctx in contexts.items():
            policy = {self.prefill_deployment: self.prefill_policy,
                      self.decode_deployment: self.decode_policy}.get(ctx.deployment_name,
                                                                      replica_queue_length_autoscaling_policy)
            desired[deployment_id] = policy(ctx)[0]
            by_name[ctx.deployment_name] = deployment_id
        prefill_id, decode_id = by_name.get(self.prefill_deployment), by_name.get(self.decode_deployment)
        if prefill_id is not None and decode_id is not None:
            desired[prefill_id], desired[decode_id] = bounded_ratio(
                math.ceil(desired[prefill_id]), math.ceil(desired[decode_id]), self.min_ratio, self.max_ratio)
        return desired, {}

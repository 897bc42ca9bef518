"""DistServe-style routing (docs/architecture.md, "Routing") as Ray Serve request routers, fed by each replica's
`record_routing_stats`.

`choose_replicas` returns ranks (most preferred first); Ray Serve then sends to the least busy replica of the best
rank that accepts. Replicas that have not reported stats yet rank last but are still usable.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

UNKNOWN = float("inf")


class LeastQueuedTokensRouter(RequestRouter):
    """Prefill: the replica with the fewest queued prompt tokens; a replica whose batch runs past prefill.max_batch_s
    (`stuck_batch_s`: it refuses new requests until the batch returns) last."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        def key(replica: RunningReplica) -> tuple:
            stats = replica.routing_stats or {}
            return stats.get("stuck_batch_s", 0) > 0, stats.get("queued_prompt_tokens", UNKNOWN)

        return [[replica] for replica in sorted(candidate_replicas, key=key)]


class MostFreeKVRouter(RequestRouter):
    """Decode: among replicas with a free KV slot, the one with the most; then those with the shortest wait. A
    replica whose model thread is held by a step (`held_step_s`: it refuses what others can take) comes after those;
    last come the replicas that already refused this request, which the request itself names (`avoid_replicas`, see
    services/router/decode_admission.py), whatever their stats say: stats are up to 0.5 s old."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        avoid = set(pending_request.kwargs.get("avoid_replicas", ())) if pending_request is not None else set()

        def key(replica: RunningReplica) -> tuple:
            stats = replica.routing_stats or {}
            free = stats.get("num_free_slots", 0)
            held = stats.get("held_step_s", 0) > 0 or stats.get("stuck_step_s", 0) > 0
            return (replica.replica_id.unique_id in avoid, held, 0 if free > 0 else 1, -free,
                    stats.get("num_waiting", UNKNOWN))

        return [[replica] for replica in sorted(candidate_replicas, key=key)]

"""Running replicas per deployment of the application, as Ray Serve's controller reports them: what `Health` returns
so load tools can plot replicas per pool next to latency while the autoscaler works."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class ReplicaCounts:
    """Asks the Serve controller (`serve.status()`, a blocking call, so off the event loop) at most once per
    `max_age_s`; concurrent callers share one refresh. An unreachable controller gives the last known counts."""

    def __init__(self, max_age_s: float = 1.0):
        from ray import serve

        self.app_name = serve.get_replica_context().app_name  # the router's own application
        self.max_age_s = max_age_s
        self.counts: dict[str, int] = {}
        self.refreshed_at = float("-inf")
        self.lock = asyncio.Lock()

    async def get(self) -> dict[str, int]:
        async with self.lock:
            if time.monotonic() - self.refreshed_at >= self.max_age_s:
                try:
                    self.counts = await asyncio.to_thread(running_replicas, self.app_name)
                except Exception as e:  # noqa: BLE001  the counts are informational; Health still answers
                    log.warning("could not read replica counts from Ray Serve: %s", e)
                self.refreshed_at = time.monotonic()
            return dict(self.counts)


def running_replicas(app_name: str) -> dict[str, int]:
    """{deployment name: replicas in state RUNNING} for one application."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: int(status.replica_states.get("RUNNING", 0)) for name, status in app.deployments.items()}

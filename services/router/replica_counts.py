"""Running replicas per deployment of the application, as Ray Serve's controller reports them: what `Health` returns
so load tools can plot replicas per pool next to latency while the autoscaler works, and what tells the health
probe that a pool has no replica at all (services/router/pool_health.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class ReplicaCounts:
    """Asks the Serve controller on a thread of its own: `serve.status()` blocks and takes no timeout, so the call is
    waited for at most `timeout_s` and never holds a lock. At most one call is in flight: a controller that does not
    answer holds that one thread, and every `get` meanwhile answers the last known counts within `timeout_s` (at
    once, once the call is known to be late) instead of queueing another call behind it.

    Counts younger than `max_age_s` are answered without asking: serve.status() cost the router about 20 ms of CPU
    per call (the controller's whole status, rebuilt as pydantic models, each deployment's request router pickled),
    and a load balancer polling Health every second spent that on the cores the model steps need."""

    def __init__(self, timeout_s: float, max_age_s: float = 0.0):
        from ray import serve

        self.app_name = serve.get_replica_context().app_name  # the router's own application
        self.timeout_s, self.max_age_s = timeout_s, max_age_s
        self.counts: dict[str, int] = {}
        self._answered_at: float | None = None  # monotonic time of the controller's last answer
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-status")
        self._call: asyncio.Future | None = None  # the serve.status() call in flight, if any

    async def get(self) -> dict[str, int]:
        """The counts now (at most `max_age_s` old), or the last known ones when the controller fails or does not
        answer in time."""
        if self._answered_at is not None and time.monotonic() - self._answered_at < self.max_age_s:
            return dict(self.counts)
        if self._call is None or self._call.done():
            self._call = asyncio.wrap_future(self._thread.submit(running_replicas, self.app_name))
        try:
            self.counts = await asyncio.wait_for(asyncio.shield(self._call), self.timeout_s)
            self._answered_at = time.monotonic()
        except TimeoutError:
            log.warning("Ray Serve's controller did not answer serve.status() within %g s: the last replica counts "
                        "stand", self.timeout_s)
        except Exception as e:  # noqa: BLE001  the counts are informational; Health still answers
            log.warning("could not read replica counts from Ray Serve: %s", type(e).__name__)
        return dict(self.counts)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def running_replicas(app_name: str) -> dict[str, int]:
    """{deployment name: replicas in state RUNNING} for one application."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: int(status.replica_states.get("RUNNING", 0)) for name, status in app.deployments.items()}

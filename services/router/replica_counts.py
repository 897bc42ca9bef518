"""Running replicas per deployment of the application, as Ray Serve's controller reports them: what `Health` returns
so load tools can plot replicas per pool next to latency while the autoscaler works, and what tells the health
probe that a pool has no replica at all (services/router/pool_health.py)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class ReplicaCounts:
    """Asks the Serve controller on a thread of its own: `serve.status()` blocks and takes no timeout, so the call is
    waited for at most `timeout_s` and never holds a lock. At most one call is in flight: a controller that does not
    answer holds that one thread, and every `get` meanwhile answers the last known counts within `timeout_s` (at
    once, once the call is known to be late) instead of queueing another call behind it. Callers cache the answer
    (pool_health.py asks at most once a second)."""

    def __init__(self, timeout_s: float):
        from ray import serve

        self.app_name = serve.get_replica_context().app_name  # the router's own application
        self.timeout_s = timeout_s
        self.counts: dict[str, int] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-status")
        self._call: asyncio.Future | None = None  # the serve.status() call in flight, if any

    async def get(self) -> dict[str, int]:
        """The counts now, or the last known ones when the controller fails or does not answer in time."""
        if self._call is None or self._call.done():
            self._call = asyncio.wrap_future(self._thread.submit(running_replicas, self.app_name))
        try:
            self.counts = await asyncio.wait_for(asyncio.shield(self._call), self.timeout_s)
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

"""Whether both pools serve, as `Health`, grpc.health.v1 `Check`/`Watch` and HTTP `/health` report it: one cached
answer, refreshed by one probe at a time, at most once per `max_age_s`.

Why a cache: the health endpoints need no API key (probes carry none), so anyone who reaches a port may call them as
fast as they like. When every call asked both pools (`stats()` through the same handles and queues as real requests)
and the Serve controller, a flood of keyless calls could fill a pool's queue. Now, whatever the rate of calls, each
pool gets at most one probe per `max_age_s` and holds at most one place in its queue for health; every call in
between answers from the cache, and calls that arrive while a probe runs share its answer.

Bounds, decided: a probe that fails or has no answer within `timeout_s` means NOT_SERVING (a pool that cannot
answer a probe in that time cannot serve a request either), with the replica counts last known. So no health call
waits longer than `timeout_s`, whatever the pools or the controller do (replica_counts.py bounds the controller's
part on its own)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolStatus:
    serving: bool                                             # both pools have a replica that answers
    replicas: dict[str, int] = field(default_factory=dict)    # running replicas per deployment (Serve's controller)


class PoolHealth:
    """The last `PoolStatus` and when it was taken. `probe` finds the status now (it may raise or hang: both are
    NOT_SERVING after `timeout_s`)."""

    def __init__(self, probe: Callable[[], Awaitable[PoolStatus]], max_age_s: float, timeout_s: float):
        self._probe, self.max_age_s, self.timeout_s = probe, max_age_s, timeout_s
        self._status = PoolStatus(serving=False)
        self._checked_at = float("-inf")                  # monotonic time the last probe ended
        self._probing: asyncio.Future | None = None       # the probe in flight, shared by every caller
        self.num_probes = 0

    async def get(self) -> PoolStatus:
        if time.monotonic() - self._checked_at < self.max_age_s:
            return self._status
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probed())
        return await asyncio.shield(self._probing)  # a caller that leaves does not cancel the others' probe

    async def _probed(self) -> PoolStatus:
        self.num_probes += 1
        try:
            status = await asyncio.wait_for(self._probe(), self.timeout_s)
        except TimeoutError:
            log.warning("health probe: no answer from the pools within %g s: NOT_SERVING", self.timeout_s)
            status = PoolStatus(False, self._status.replicas)
        except Exception as e:  # noqa: BLE001  no healthy replica in a pool
            log.warning("health probe failed (%s): NOT_SERVING", type(e).__name__)
            status = PoolStatus(False, self._status.replicas)
        self._status, self._checked_at = status, time.monotonic()
        return status

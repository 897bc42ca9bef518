"""Keeps alive the KV leases of requests a decode replica admitted but cannot start yet (every KV slot is taken).

A prefill replica frees a lease `kv.lease_ttl_s` after it was made or last renewed. A request waiting for a decode
slot has not pulled its KV yet, so while it waits its decode replica renews the lease: at once when it starts waiting,
then every TTL/3 (the TTL the prefill replica answers with), in one Renew call per prefill replica for all of its
waiting requests. Renewal stops as soon as the request gets its slot, is cancelled or fails; from then on its lease
lives one TTL more at most, like any lease. So a decode replica that dies stops renewing and its waiting requests'
leases expire as before: renewal never keeps KV nobody waits for.

A lease the prefill replica no longer holds (released, expired, or the replica restarted) resolves the request's
`lost` future with ABORTED at once, so the request fails fast instead of waiting on for a slot. A renewal call that
fails (UNAVAILABLE, ...) is retried after `retry_s` (or TTL/3 if shorter); the lease runs out only if the calls
fail for a whole TTL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from overfill.serving.types import ServiceError
from overfill.status import StatusCode
from overfill.transport.base import KVReceiver, KVTicket, KVTransferError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class KeptLease:
    """One waiting request's lease, renewed until `LeaseKeeper.stop`. `lost` resolves with a ServiceError (ABORTED)
    if the prefill replica no longer holds it; it never resolves otherwise."""

    ticket: KVTicket
    lost: asyncio.Future
    due: float                 # monotonic time of its next renewal
    num_renewals: int = 0


class LeaseKeeper:
    """Renews the leases handed to `keep` until `stop`. Lives on the decode replica's event loop; the blocking
    receiver calls run on `executor` (never on the pull threads, so a slow pull cannot delay a renewal)."""

    def __init__(self, receiver: KVReceiver, executor: Executor, retry_s: float = 1.0, call_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        if retry_s <= 0 or call_timeout_s <= 0:
            raise ValueError(f"retry_s and call_timeout_s must be positive, got {retry_s}, {call_timeout_s}")
        self.receiver, self.executor, self.retry_s, self.call_timeout_s = receiver, executor, retry_s, call_timeout_s
        self.clock = clock
        self._kept: set[KeptLease] = set()
        self._ttl_s: dict[str, float] = {}  # prefill KV service address -> the lease TTL it last answered with
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.num_renewals = 0  # leases renewed, counted once per lease and call
        self.num_lost = 0      # waiting requests whose lease was gone

    def keep(self, ticket: KVTicket) -> KeptLease:
        """Start renewing this ticket's lease (first renewal at once). On the event loop."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="decode-lease-keeper")
        kept = KeptLease(ticket, loop.create_future(), due=self.clock())
        self._kept.add(kept)
        self._wake.set()
        return kept

    def stop(self, kept: KeptLease) -> None:
        """Stop renewing (the request got its slot, or left); a renewal in flight for it is ignored."""
        self._kept.discard(kept)

    @property
    def num_kept(self) -> int:
        return len(self._kept)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._kept.clear()

    # ---- the renewal loop ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = self.clock()
            due = [kept for kept in self._kept if kept.due <= now]
            if not due:
                self._wake.clear()
                next_due = min((kept.due for kept in self._kept), default=math.inf)
                try:
                    await asyncio.wait_for(self._wake.wait(), None if next_due == math.inf else next_due - now)
                except TimeoutError:
                    pass
                continue
            by_address: dict[str, list[KeptLease]] = defaultdict(list)
            for kept in due:
                by_address[kept.ticket.address].append(kept)
            await asyncio.gather(*(self._renew(address, batch) for address, batch in by_address.items()))

    async def _renew(self, address: str, batch: list[KeptLease]) -> None:
        """One Renew call for the due leases held at `address`; schedules their next renewal or reports them lost."""
        loop = asyncio.get_running_loop()
        known_ttl_s = self._ttl_s.get(address, math.inf)
        timeout_s = min(self.call_timeout_s, known_ttl_s / 3)
        started = self.clock()
        request_ids = [kept.ticket.request_id for kept in batch]
        try:
            renewal = await loop.run_in_executor(self.executor, self.receiver.renew, address, request_ids, timeout_s)
        except KVTransferError as e:
            log.warning("renewing %d KV lease(s) at %s failed, retrying in %.1f s: %s", len(batch), address,
                        min(self.retry_s, known_ttl_s / 3), e)
            for kept in batch:
                kept.due = started + min(self.retry_s, known_ttl_s / 3)
            return
        self._ttl_s[address] = renewal.ttl_s
        for kept in batch:
            if kept not in self._kept:  # stopped while the call was out: it has its slot, or left
                continue
            if kept.ticket.request_id in renewal.not_found:
                self._kept.discard(kept)
                self.num_lost += 1
                if not kept.lost.done():
                    kept.lost.set_result(ServiceError(
                        StatusCode.ABORTED, f"the KV of request {kept.ticket.request_id!r} was no longer leased while "
                                            f"it waited for a decode slot (lease expired or released at {address})"))
            else:
                kept.due = started + renewal.ttl_s / 3  # the lease lives until at least started + ttl_s
                kept.num_renewals += 1
                self.num_renewals += 1

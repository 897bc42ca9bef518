"""The lease table: a finished prefill's KV held for the decode replica that will pull it, for a bounded time.

Prefill puts a request's KV under a lease; the puller reads it and releases it. A lease nobody releases expires after
its time-to-live and its KV is freed (and counted), so no KV can leak however a request dies (docs/architecture.md,
"Invariants"). A decode replica that admitted the request but waits for a free slot renews the lease: each renewal
extends it to one time-to-live from now (never further), so a lease whose renewals stop expires as before.
Thread-safe: the gRPC KV service reads it from its worker threads while the prefill loop writes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from overfill.transport.wire import KVLayout


@dataclass(frozen=True)
class LeaseRenewal:
    """What a renewal did: the renewed leases live `ttl_s` more seconds from when it happened; `not_found` names the
    requests without a live lease (never made, released or expired), which a renewal never brings back."""

    ttl_s: float
    not_found: frozenset[str]


@dataclass
class Lease:
    request_id: str
    k: torch.Tensor  # [L, H, T, D]
    v: torch.Tensor  # [L, H, T, D]
    expires_at: float
    ttl_s: float                            # how long the lease lives after it was made or last renewed
    ready: torch.cuda.Event | None = None  # CUDA: recorded after k and v were written (None on CPU)

    @property
    def layout(self) -> KVLayout:
        return KVLayout.of(self.k)

    @property
    def num_bytes(self) -> int:
        return self.layout.total_bytes


class LeaseTable:
    def __init__(self, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self.clock = clock
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self.num_expired = 0   # leases freed because nobody released them in time
        self.num_released = 0

    def put(self, request_id: str, k: torch.Tensor, v: torch.Tensor, ttl_s: float | None = None,
            ready: torch.cuda.Event | None = None) -> Lease:
        """Hold KV (k, v: [L, H, T, D]) for `request_id`; returns the lease with its expiry (monotonic clock).
        `ready`: for CUDA tensors, an event a reader on another stream waits on before reading them."""
        ttl_s = ttl_s or self.ttl_s
        lease = Lease(request_id, k, v, self.clock() + ttl_s, ttl_s, ready)
        with self._lock:
            if request_id in self._leases:
                raise KeyError(f"a KV lease for request {request_id!r} already exists")
            self._leases[request_id] = lease
        return lease

    def get(self, request_id: str) -> Lease | None:
        """The live lease for a request, or None (never made, released, or expired, which frees it now)."""
        with self._lock:
            lease = self._leases.get(request_id)
            if lease is not None and lease.expires_at <= self.clock():
                del self._leases[request_id]
                self.num_expired += 1
                return None
            return lease

    def renew(self, request_ids: list[str]) -> LeaseRenewal:
        """Extend each live lease named to one time-to-live from now (idempotent: renewing twice is renewing once,
        later). A lease past its expiry is freed now, as `get` does, and reported in `not_found`."""
        now = self.clock()
        not_found, ttls = set(), []
        with self._lock:
            for request_id in request_ids:
                lease = self._leases.get(request_id)
                if lease is not None and lease.expires_at <= now:
                    del self._leases[request_id]
                    self.num_expired += 1
                    lease = None
                if lease is None:
                    not_found.add(request_id)
                    continue
                lease.expires_at = now + lease.ttl_s
                ttls.append(lease.ttl_s)
        return LeaseRenewal(min(ttls, default=self.ttl_s), frozenset(not_found))

    def release(self, request_id: str) -> bool:
        with self._lock:
            lease = self._leases.pop(request_id, None)
            if lease is not None:
                self.num_released += 1
            return lease is not None

    def expire(self) -> int:
        """Free every lease past its expiry; returns how many. Call periodically."""
        now = self.clock()
        with self._lock:
            dead = [rid for rid, lease in self._leases.items() if lease.expires_at <= now]
            for rid in dead:
                del self._leases[rid]
            self.num_expired += len(dead)
        return len(dead)

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    @property
    def num_bytes(self) -> int:
        with self._lock:
            return sum(lease.num_bytes for lease in self._leases.values())

    @property
    def num_tokens(self) -> int:
        """Sequence positions held, summed over leases (what prefill's KV token budget counts)."""
        with self._lock:
            return sum(lease.k.shape[2] for lease in self._leases.values())  # k: [L, H, T, D]

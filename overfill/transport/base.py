"""The KV transfer interface, split by role, and the registry of backends by name.

Prefill side (`KVSender`): holds a finished prefill's KV under a lease and hands out a ticket saying where to pull it.
Decode side (`KVReceiver`): pulls the KV a ticket names, then releases the lease so prefill frees it; while a request
waits for a decode slot, renews its lease so it does not expire meanwhile (serving/lease_keeper.py).
Backends: `grpc` (chunked streaming over the internal KV service), `nccl` and `gloo` (metadata over the KV service,
bytes over a 2-rank process group per replica pair: process_group_backend.py), `inprocess` (tests: both roles in one
process).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from overfill.status import StatusCode
from overfill.transport.leases import LeaseRenewal, LeaseTable
from overfill.transport.wire import KVLayout


class KVTransferError(RuntimeError):
    """A pull or release failed; `code` is its StatusCode (NOT_FOUND, UNAUTHENTICATED, UNAVAILABLE, ...)."""

    def __init__(self, code: StatusCode | str, message: str):
        code = StatusCode(code)
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class KVTicket:
    """What prefill returns instead of KV bytes: small enough to travel through the router."""

    request_id: str
    address: str           # where the KV service holding the lease listens (host:port), or the in-process name
    layout: KVLayout       # geometry, dtype and token count of the leased KV
    expires_at: float      # wall-clock (time.time()) expiry of the lease


class KVSender(ABC):
    """Prefill side. Built once per prefill replica; a backend sets `leases` (where the KV waits) and `address`
    (where pullers reach it) and says how to stop serving."""

    leases: LeaseTable
    address: str

    def publish(self, request_id: str, k: torch.Tensor, v: torch.Tensor) -> KVTicket:
        """Lease KV (k, v: [L, H, T, D], owned by the sender from now on) and return its ticket. Called on the
        thread that wrote k and v; on CUDA an event marks where they are complete on its stream, for senders that
        read them on a stream of their own."""
        ready = None
        if k.is_cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(k.device))
        lease = self.leases.put(request_id, k, v, ready=ready)
        expires_at = time.time() + (lease.expires_at - self.leases.clock())  # monotonic expiry -> wall clock
        return KVTicket(request_id, self.address, lease.layout, expires_at)

    def release(self, request_id: str) -> bool:
        """Free a lease now (e.g. the request was cancelled before anyone pulled)."""
        return self.leases.release(request_id)

    @property
    def num_leases(self) -> int:
        return len(self.leases)

    @abstractmethod
    def close(self) -> None:
        """Stop serving; every lease is dropped."""


class KVReceiver(ABC):
    """Decode side. Built once per decode replica."""

    @abstractmethod
    def pull(self, ticket: KVTicket, expected: KVLayout, timeout_s: float = 30.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The ticket's KV, k, v: [L, H, T, D], checked against `expected` (geometry and dtype; token count too if
        set). Raises KVTransferError."""

    @abstractmethod
    def release(self, ticket: KVTicket) -> bool:
        """Acknowledge: the prefill side frees the lease."""

    @abstractmethod
    def renew(self, address: str, request_ids: list[str], timeout_s: float = 10.0) -> LeaseRenewal:
        """Keep the leases of these requests, all held at `address` (a ticket's), alive one more TTL from now.
        Requests whose lease is gone come back in `not_found`. Raises KVTransferError if the call failed (then
        nothing is known to be renewed)."""

    def stats(self) -> dict:
        """Backend counters for the replica's stats (empty unless the backend keeps some)."""
        return {}

    def close(self) -> None:
        """Close connections."""


_SENDERS: dict[str, Callable[..., KVSender]] = {}
_RECEIVERS: dict[str, Callable[..., KVReceiver]] = {}


def register_backend(name: str, sender: Callable[..., KVSender], receiver: Callable[..., KVReceiver]) -> None:
    _SENDERS[name], _RECEIVERS[name] = sender, receiver


def _lookup(table: dict, name: str):
    from overfill.transport import grpc_backend, inprocess, process_group_backend  # noqa: F401  (registers them)

    if name not in table:
        raise ValueError(f"transport {name!r} is not one of: {', '.join(sorted(table))}")
    return table[name]


def make_sender(name: str, **kwargs) -> KVSender:
    return _lookup(_SENDERS, name)(**kwargs)


def make_receiver(name: str, **kwargs) -> KVReceiver:
    return _lookup(_RECEIVERS, name)(**kwargs)

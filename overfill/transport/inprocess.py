"""In-process KV transport for tests: the receiver reads the sender's lease table directly (no bytes copied)."""

from __future__ import annotations

import itertools

from overfill.status import StatusCode
from overfill.transport.base import KVReceiver, KVSender, KVTicket, KVTransferError, register_backend
from overfill.transport.leases import LeaseRenewal, LeaseTable
from overfill.transport.wire import KVLayout, layout_mismatch

_TABLES: dict[str, LeaseTable] = {}  # address -> the lease table of the sender living there
_names = itertools.count()


class InProcessSender(KVSender):
    def __init__(self, lease_ttl_s: float = 30.0, **_):
        self.address = f"inprocess-{next(_names)}"
        self.leases = LeaseTable(lease_ttl_s)
        _TABLES[self.address] = self.leases

    def close(self) -> None:
        _TABLES.pop(self.address, None)


class InProcessReceiver(KVReceiver):
    def __init__(self, **_):
        pass

    def pull(self, ticket: KVTicket, expected: KVLayout, timeout_s: float = 30.0):
        table = _TABLES.get(ticket.address)
        if table is None:
            raise KVTransferError(StatusCode.UNAVAILABLE, f"no KV sender at {ticket.address}")
        lease = table.get(ticket.request_id)
        if lease is None:
            raise KVTransferError(StatusCode.NOT_FOUND, f"no KV lease for request {ticket.request_id!r}")
        problem = layout_mismatch(lease.layout, expected)
        if problem:
            raise KVTransferError(StatusCode.FAILED_PRECONDITION, f"leased KV has {problem}")
        return lease.k.clone(), lease.v.clone()

    def release(self, ticket: KVTicket) -> bool:
        table = _TABLES.get(ticket.address)
        return table is not None and table.release(ticket.request_id)

    def renew(self, address: str, request_ids: list[str], timeout_s: float = 10.0) -> LeaseRenewal:
        table = _TABLES.get(address)
        if table is None:
            raise KVTransferError(StatusCode.UNAVAILABLE, f"no KV sender at {address}")
        return table.renew(request_ids)


register_backend("inprocess", InProcessSender, InProcessReceiver)

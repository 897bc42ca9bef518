"""KV transports `nccl` and `gloo`: metadata over the gRPC KV service, bytes over a process group per replica pair.

    decode replica (rank 1)                                    prefill replica (rank 0)
    pull(ticket), first time for this prefill replica:
      OpenGroup(receiver_id, backend) ─────────────────────►  a new pair: its send thread starts building rank 0
      join as rank 1 (TCPStore at store_address) ◄─────────►  (the two constructors meet in the store)
    Send(request_id, expected geometry, group_id) ─────────►  lease and geometry checked, send queued, header back
      header checked, K and V received on the group ◄───────  send thread: K, V (own CUDA stream with NCCL)
    Release(request_id) ───────────────────────────────────►  lease freed (as with grpc)

The group is created on a pair's first transfer and cached; the prefill side closes a pair idle for `pair_idle_s`
(its decode replica may be gone), and a receiver whose group is gone there (Send answers ABORTED, nothing sent) opens
a new one and asks again. Transfers on one pair run one at a time (NCCL pairs point-to-point messages in issue
order): the receiver holds the pair's lock from Send to the end of the bytes, and the sender's one thread per pair
sends in the order it answered. Sends never touch the prefill batch loop.
A failed or timed-out transfer tears the group down on both sides (the receiver opens a new one on its next
transfer), fails that request with UNAVAILABLE and frees its lease; both replicas keep serving. The same code runs
with NCCL on GPUs and with gloo on CPU, which is how CI tests it.
With `tls` (tls.py) the metadata calls go over mutual TLS as the grpc backend's do; the TCPStore and the bytes on the
group do not (torch.distributed has no TLS): the pair's HMAC handshake authenticates the peers, nothing encrypts KV.
"""

from __future__ import annotations

import functools
import logging
import queue
import secrets
import threading
import time
import uuid

import grpc
import torch

from overfill.request_parsing import lenient_parser
from overfill.status import StatusCode
from overfill.transport.base import KVTicket, KVTransferError, register_backend
from overfill.transport.grpc_backend import GrpcKVReceiver, GrpcKVSender, _geometry, _KVTransferServicer, _layout
from overfill.transport.leases import Lease
from overfill.transport.pair_group import (
    BACKENDS,
    DECODE_RANK,
    PREFILL_RANK,
    PairGroup,
    PairGroupError,
    StoreHost,
    connect_store,
)
from overfill.transport.tls import KVTLS
from overfill.transport.wire import KVLayout, KVWireError, check_header, layout_mismatch
from overfill.v1 import kv_transfer_pb2 as pb

log = logging.getLogger(__name__)


def _rpc_error(error: grpc.RpcError, what: str) -> KVTransferError:
    """A failed metadata call as a transfer error; running out of time is UNAVAILABLE, as a slow transfer is."""
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return KVTransferError(StatusCode.UNAVAILABLE, f"{what}: timed out ({error.details()})")
    return KVTransferError(StatusCode.of_grpc(code), error.details() or what)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"process-group backend {backend!r} is not one of: {', '.join(BACKENDS)}")


# ---- prefill side ---------------------------------------------------------------------------------------------------


class _SenderPair:
    """The prefill side of one pair: its group, built and used only on the pair's own thread, fed leases in the order
    Send answered. After a failure it is `broken`: queued and later leases are freed, never sent."""

    def __init__(self, group_id: str, receiver_id: str, build, on_failed, idle_s: float):
        self.group_id, self.receiver_id, self.idle_s = group_id, receiver_id, idle_s
        self._on_failed = on_failed  # (request_id, reason) -> None: frees the lease
        self._queue: queue.Queue[Lease | None] = queue.Queue()
        self._lock = threading.Lock()  # orders `broken` against submits
        self.broken = False
        self.num_sent = 0
        self._group: PairGroup | None = None  # set by the thread once built
        self._thread = threading.Thread(target=self._run, args=(build,), daemon=True, name=f"kv-send-{group_id[:8]}")
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, lease: Lease) -> bool:
        """Queue a lease's bytes; False if the pair is broken (nothing queued)."""
        with self._lock:
            if self.broken:
                return False
            self._queue.put(lease)
            return True

    def close(self, wait_s: float = 0.0) -> None:
        """Stop: queued leases are freed, a send in progress is aborted; waits up to `wait_s` for the thread."""
        self._break("the pair was closed")
        self._queue.put(None)
        group = self._group
        if group is not None:
            group.close()
        if wait_s > 0 and self._thread is not threading.current_thread():
            self._thread.join(wait_s)

    def _close_if_idle(self) -> bool:
        """Mark the pair closed unless a lease is queued (checked under the submit lock, so none can slip in)."""
        with self._lock:
            if not self._queue.empty():
                return False
            self.broken = True
            return True

    def _break(self, reason: str) -> None:
        with self._lock:
            self.broken = True
            drained = []
            while not self._queue.empty():
                drained.append(self._queue.get_nowait())
        for lease in drained:
            if lease is not None:
                self._on_failed(lease.request_id, reason)

    def _run(self, build) -> None:
        try:
            group = self._group = build()
        except PairGroupError as e:
            log.warning("KV pair group %s with receiver %s could not be built: %s", self.group_id[:8],
                        self.receiver_id[:8], e)
            self._break(str(e))
            return
        try:
            while True:
                try:
                    lease = self._queue.get(timeout=self.idle_s)
                except queue.Empty:  # nobody pulled for a while: free the group (the receiver reopens if needed)
                    if self._close_if_idle():
                        return
                    continue  # a lease arrived just now: send it
                if lease is None or self.broken:
                    if lease is not None:
                        self._on_failed(lease.request_id, "the pair group broke")
                    return
                try:
                    group.send(lease.k, lease.v, lease.ready)
                    self.num_sent += 1
                except PairGroupError as e:
                    log.warning("KV send of %s failed; tearing down pair group %s: %s", lease.request_id,
                                self.group_id[:8], e)
                    self._on_failed(lease.request_id, str(e))
                    self._break(str(e))
                    return
                finally:
                    del lease  # drop this thread's reference now: the KV lives only as long as its lease
        finally:
            group.close()


class _PairServicer:
    """OpenGroup and Send, next to the grpc backend's Pull and Release (same secret, same lease table)."""

    def __init__(self, sender: ProcessGroupKVSender, base: _KVTransferServicer):
        self.sender, self.base = sender, base

    def OpenGroup(self, request: pb.OpenGroupRequest, context: grpc.ServicerContext) -> pb.OpenGroupResponse:
        self.base._authenticate(context, request)
        if not request.receiver_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "receiver_id is empty")
        if request.backend != self.sender.backend:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"this prefill replica moves KV over {self.sender.backend!r}, the decode replica asked for "
                          f"{request.backend[:20]!r}: kv.transport must be the same in both pools")
        group_id, store_address = self.sender.open_pair(request.receiver_id)
        return pb.OpenGroupResponse(group_id=group_id, store_address=store_address)

    def Send(self, request: pb.SendRequest, context: grpc.ServicerContext) -> pb.KVHeader:
        self.base._authenticate(context, request)
        self.base._check_expected_dtype(request, context)
        pair = self.sender.pair_of_group(request.group_id)
        if pair is None or pair.broken:
            context.abort(grpc.StatusCode.ABORTED, f"no open KV process group {request.group_id[:32]!r} (closed "
                                                   "after a failure or when idle, or never opened): open a new one")
        lease = self.sender.leases.get(request.request_id)
        if lease is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no KV lease for request {request.request_id[:200]!r} "
                                                     "(never made, released or expired)")
        problem = layout_mismatch(lease.layout, _layout(request.expected_geometry, request.expected_dtype, 0))
        if problem:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"leased KV has {problem}")
        if not pair.submit(lease):
            context.abort(grpc.StatusCode.ABORTED, f"KV process group {request.group_id[:32]!r} was closed: open a "
                                                   "new one")
        layout = lease.layout
        return pb.KVHeader(request_id=request.request_id, geometry=_geometry(layout), dtype=layout.dtype,
                           num_tokens=layout.num_tokens, total_bytes=layout.total_bytes)


class ProcessGroupKVSender(GrpcKVSender):
    """Prefill side: the gRPC KV service (leases, secret, Pull/Release) plus OpenGroup/Send, and a TCPStore on the
    bind host for the pairs' rendezvous (started at the first OpenGroup). `device`: the model's device."""

    def __init__(self, secret: str, backend: str, bind_address: str = "127.0.0.1:0", device: str = "cpu",
                 transfer_timeout_s: float = 30.0, pair_idle_s: float = 600.0, **kwargs):
        _check_backend(backend)
        if transfer_timeout_s <= 0 or pair_idle_s <= 0:
            raise ValueError(f"transfer_timeout_s and pair_idle_s must be positive, got {transfer_timeout_s}, "
                             f"{pair_idle_s}")
        self.backend, self.device, self.transfer_timeout_s = backend, device, transfer_timeout_s
        self.pair_idle_s = pair_idle_s
        self._bind_host = bind_address.rsplit(":", 1)[0]
        self._pairs: dict[str, _SenderPair] = {}  # receiver_id -> its current pair
        self._retired: list[_SenderPair] = []      # replaced or closed pairs whose thread may still be finishing
        self._pairs_lock = threading.Lock()
        self._store: StoreHost | None = None
        self.num_failed_transfers = 0
        self._secret = secret  # the pairs' handshake proves it (pair_group.py)
        super().__init__(secret, bind_address=bind_address, **kwargs)

    def _extra_handlers(self, servicer: _KVTransferServicer) -> dict[str, grpc.RpcMethodHandler]:
        pairs = _PairServicer(self, servicer)
        return {
            "OpenGroup": grpc.unary_unary_rpc_method_handler(
                pairs.OpenGroup, request_deserializer=lenient_parser(pb.OpenGroupRequest),
                response_serializer=pb.OpenGroupResponse.SerializeToString),
            "Send": grpc.unary_unary_rpc_method_handler(
                pairs.Send, request_deserializer=lenient_parser(pb.SendRequest),
                response_serializer=pb.KVHeader.SerializeToString),
        }

    def open_pair(self, receiver_id: str) -> tuple[str, str]:
        """A new pair with this receiver (its previous one torn down): (group_id, store address)."""
        group_id = secrets.token_hex(16)
        with self._pairs_lock:
            if self._store is None:
                self._store = StoreHost(self._bind_host, self.transfer_timeout_s)
            store = self._store

            def build() -> PairGroup:
                return PairGroup(self.backend, store.store, group_id, PREFILL_RANK, self._bind_host,
                                 self.transfer_timeout_s, self._secret, self.device)

            old = self._pairs.pop(receiver_id, None)
            for gone in [r for r, pair in self._pairs.items() if pair.broken]:  # closed pairs of other receivers
                self._retired.append(self._pairs.pop(gone))
            if old is not None:
                self._retired.append(old)
            self._retired = [pair for pair in self._retired if pair.running]
            self._pairs[receiver_id] = _SenderPair(group_id, receiver_id, build, self._transfer_failed,
                                                   self.pair_idle_s)
        if old is not None:
            old.close()
        return group_id, store.address

    def pair_of_group(self, group_id: str) -> _SenderPair | None:
        with self._pairs_lock:
            return next((p for p in self._pairs.values() if p.group_id == group_id), None)

    def _transfer_failed(self, request_id: str, reason: str) -> None:
        """A lease whose bytes will never arrive: free it now (the decode side fails the request)."""
        self.num_failed_transfers += 1
        self.leases.release(request_id)

    @property
    def num_pairs(self) -> int:
        with self._pairs_lock:
            return sum(not p.broken for p in self._pairs.values())

    def close(self) -> None:
        super().close()
        with self._pairs_lock:
            pairs, self._pairs = list(self._pairs.values()) + self._retired, {}
            self._retired = []
            store, self._store = self._store, None
        for pair in pairs:
            pair.close(wait_s=10.0)  # not left running into interpreter shutdown
        if store is not None:
            store.close()


# ---- decode side ----------------------------------------------------------------------------------------------------


class ProcessGroupKVReceiver(GrpcKVReceiver):
    """Decode side: one group per prefill replica (by its KV service address), opened on first use and cached.
    `device`: where pulled KV lands (the model's device with NCCL; the host with gloo). `bind_host`: where this
    replica's end of a gloo group listens (kv.bind_host)."""

    def __init__(self, secret: str, backend: str, device: str = "cpu", bind_host: str = "127.0.0.1",
                 transfer_timeout_s: float = 30.0, tls: KVTLS | None = None, **_):
        _check_backend(backend)
        if transfer_timeout_s <= 0:
            raise ValueError(f"transfer_timeout_s must be positive, got {transfer_timeout_s}")
        super().__init__(secret, tls=tls)
        self._secret = secret  # the pairs' handshake proves it (pair_group.py)
        self.backend, self.device, self.bind_host = backend, device, bind_host
        self.transfer_timeout_s = transfer_timeout_s
        self.receiver_id = uuid.uuid4().hex
        self._groups: dict[str, PairGroup] = {}         # prefill KV service address -> open group
        self._pair_locks: dict[str, threading.Lock] = {}  # one transfer at a time per pair
        self._locks_lock = threading.Lock()
        self.num_groups_opened = 0
        self.num_transfers = 0
        self.num_failed_transfers = 0
        self._receiving: set[str] = set()  # request ids whose bytes are being received (one per pair at most)

    def pull(self, ticket: KVTicket, expected: KVLayout, timeout_s: float = 30.0) -> tuple[torch.Tensor, torch.Tensor]:
        deadline = time.monotonic() + timeout_s
        address = ticket.address
        with self._locks_lock:
            lock = self._pair_locks.setdefault(address, threading.Lock())
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise KVTransferError(StatusCode.UNAVAILABLE, f"timed out after {timeout_s:g} s waiting for the KV link "
                                                          f"to {address}")
        try:
            # 1) The pair's group (opened on first use).
            group = self._groups.get(address) or self._open(address, deadline)
            # 2) Ask for the bytes; the header says what comes. A group the sender closed meanwhile (ABORTED: nothing
            #    was sent) is replaced once.
            try:
                layout = self._request_send(ticket, expected, group, deadline)
            except KVTransferError as e:
                if e.code is not StatusCode.ABORTED:
                    raise
                self._drop(address)
                group = self._open(address, deadline)
                layout = self._request_send(ticket, expected, group, deadline)
            # 3) Receive them.
            self._receiving.add(ticket.request_id)
            try:
                k, v = group.recv(layout)
            except PairGroupError as e:
                self._transfer_failed(ticket)
                raise KVTransferError(StatusCode.UNAVAILABLE, f"KV transfer of {ticket.request_id!r} from {address} "
                                                              f"over {self.backend} failed: {e}") from e
            finally:
                self._receiving.discard(ticket.request_id)
            self.num_transfers += 1
            return k, v
        finally:
            lock.release()

    def _open(self, address: str, deadline: float) -> PairGroup:
        """On the pair lock: ask the prefill replica for a group, then join it as rank 1."""
        try:
            with self._stub(address) as stub:
                response = stub.OpenGroup(pb.OpenGroupRequest(receiver_id=self.receiver_id, backend=self.backend),
                                          metadata=self.metadata, timeout=max(0.0, deadline - time.monotonic()))
        except grpc.RpcError as e:
            raise _rpc_error(e, "opening a KV process group failed") from e
        try:
            store = connect_store(response.store_address, deadline - time.monotonic())
            group = PairGroup(self.backend, store, response.group_id, DECODE_RANK, self.bind_host,
                              self.transfer_timeout_s, self._secret, self.device)
        except PairGroupError as e:
            raise KVTransferError(StatusCode.UNAVAILABLE,
                                  f"could not join the {self.backend} group of {address}: {e}") from e
        self._groups[address] = group
        self.num_groups_opened += 1
        return group

    def _request_send(self, ticket: KVTicket, expected: KVLayout, group: PairGroup, deadline: float) -> KVLayout:
        """Send RPC: the prefill replica checks the lease and queues its bytes; returns the checked header."""
        request = pb.SendRequest(request_id=ticket.request_id, expected_geometry=_geometry(expected),
                                 expected_dtype=expected.dtype, group_id=group.group_id)
        try:
            with self._stub(ticket.address) as stub:
                header = stub.Send(request, metadata=self.metadata, timeout=max(0.0, deadline - time.monotonic()))
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
                self._drop(ticket.address)  # the group is gone there, or the state of the pair is unknown
            raise _rpc_error(e, "KV send request failed") from e
        layout = _layout(header.geometry, header.dtype, header.num_tokens)
        try:
            if header.request_id != ticket.request_id:
                raise KVWireError(f"KV header is for request {header.request_id[:200]!r}, not {ticket.request_id!r}")
            check_header(expected if expected.num_tokens else
                         KVLayout(expected.num_layers, expected.num_kv_heads, expected.head_dim, expected.dtype,
                                  ticket.layout.num_tokens), layout, header.total_bytes)
        except KVWireError as e:  # the bytes are on their way already: this group cannot stay in step
            self._transfer_failed(ticket)
            raise KVTransferError(StatusCode.DATA_LOSS, str(e)) from e
        return layout

    def _transfer_failed(self, ticket: KVTicket) -> None:
        """Tear down the pair's group and free the lease if the prefill replica still holds it."""
        self.num_failed_transfers += 1
        self._drop(ticket.address)
        try:
            self.release(ticket)
        except KVTransferError:  # the prefill replica is gone, or freed it already; its lease expires anyway
            pass

    def _drop(self, address: str) -> None:
        group = self._groups.pop(address, None)
        if group is not None:
            group.close()

    def stats(self) -> dict:
        return {"kv_groups": len(self._groups), "kv_groups_opened": self.num_groups_opened,
                "kv_transfers": self.num_transfers, "kv_failed_transfers": self.num_failed_transfers,
                "kv_receiving": len(self._receiving)}

    def close(self) -> None:
        for address in list(self._groups):
            self._drop(address)
        super().close()


for _backend in BACKENDS:
    register_backend(_backend, functools.partial(ProcessGroupKVSender, backend=_backend),
                     functools.partial(ProcessGroupKVReceiver, backend=_backend))

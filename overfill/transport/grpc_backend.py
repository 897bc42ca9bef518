"""KV transfer over the internal gRPC KV service (proto/overfill/v1/kv_transfer.proto).

The prefill replica runs a `KVTransfer` server on a cluster-internal address; the decode replica pulls a lease as a
stream (header, then chunks of each layer's K and V well under gRPC's message limit) and releases it; while a request
waits for a decode slot, the decode replica renews its lease (Renew). Every call carries the cluster secret in
metadata and is refused with UNAUTHENTICATED without it (constant-time compare). With `tls` (tls.py) the service takes
only mutual-TLS connections from peers with a certificate of the cluster's CA, and every client presents one.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from google.protobuf.message import DecodeError

from overfill.request_parsing import UnparsableRequest, lenient_parser
from overfill.status import StatusCode
from overfill.transport.chunk_codec import decode_chunk_message, encode_chunk_message, is_header_message
from overfill.transport.base import KVReceiver, KVSender, KVTicket, KVTransferError, register_backend
from overfill.transport.leases import LeaseRenewal, LeaseTable
from overfill.transport.peer_channels import PeerChannels
from overfill.transport.tls import KVTLS, secure_channel
from overfill.transport.wire import (
    DEFAULT_CHUNK_BYTES,
    DTYPES,
    KVAssembler,
    KVLayout,
    KVWireError,
    encode_chunks,
    layout_mismatch,
)
from overfill.v1 import kv_transfer_pb2 as pb
from overfill.v1 import kv_transfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SECRET_METADATA_KEY = "x-overfill-kv-secret"
SERVICE_NAME = "overfill.v1.KVTransfer"
MAX_MESSAGE_BYTES = 4 << 20  # gRPC's default; chunks stay a quarter of it
MAX_RENEW_IDS = 1024         # request ids per Renew call; the receiver splits longer lists
# A peer that stops answering (a dead host, dropped packets) is found by HTTP/2 pings within ~15 s while a call is
# open, not only at the call's deadline; the server accepts pings that often.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
SERVER_PING_OPTIONS = [("grpc.http2.min_ping_interval_without_data_ms", 5_000), ("grpc.http2.max_ping_strikes", 0)]


def _identity(raw: bytes) -> bytes:
    return raw


def _geometry(layout: KVLayout) -> pb.KVGeometry:
    return pb.KVGeometry(num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim)


def _layout(geometry: pb.KVGeometry, dtype: str, num_tokens: int) -> KVLayout:
    return KVLayout(geometry.num_layers, geometry.num_kv_heads, geometry.head_dim, dtype, num_tokens)


class _KVTransferServicer:
    """The KVTransfer service. Pull yields serialized KVMessages (bytes) so chunks skip protobuf's copies."""

    def __init__(self, leases: LeaseTable, secret: str, chunk_bytes: int):
        self.leases, self.secret, self.chunk_bytes = leases, secret.encode(), chunk_bytes

    def _authenticate(self, context: grpc.ServicerContext, request=None) -> None:
        """The secret first (a caller without it learns nothing, not even that its bytes were malformed), then the
        request's bytes if given (lenient_parser: what protobuf refused is INVALID_ARGUMENT, not grpcio's
        INTERNAL)."""
        sent = dict(context.invocation_metadata()).get(SECRET_METADATA_KEY, "")
        if not hmac.compare_digest(sent.encode(), self.secret):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong KV service secret")
        if isinstance(request, UnparsableRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)

    @staticmethod
    def _check_expected_dtype(request, context: grpc.ServicerContext) -> None:
        """Pull and Send: INVALID_ARGUMENT unless `expected_dtype` names a dtype. Everything a caller sent is echoed
        cut short: status details must fit gRPC's trailers (8 KiB), or the caller gets RESOURCE_EXHAUSTED instead."""
        if request.expected_dtype not in DTYPES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected_dtype must be one of {', '.join(DTYPES)}, "
                                                            f"got {request.expected_dtype[:40]!r}")

    def Pull(self, request: pb.PullRequest, context: grpc.ServicerContext):
        self._authenticate(context, request)
        self._check_expected_dtype(request, context)
        lease = self.leases.get(request.request_id)
        if lease is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no KV lease for request {request.request_id[:200]!r} "
                                                     "(never made, released or expired)")
        layout = lease.layout
        expected = _layout(request.expected_geometry, request.expected_dtype, 0)
        problem = layout_mismatch(layout, expected)
        if problem:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"leased KV has {problem}")
        yield pb.KVMessage(header=pb.KVHeader(request_id=request.request_id, geometry=_geometry(layout),
                                              dtype=layout.dtype, num_tokens=layout.num_tokens,
                                              total_bytes=layout.total_bytes)).SerializeToString()
        for chunk in encode_chunks(lease.k, lease.v, self.chunk_bytes):
            yield encode_chunk_message(chunk)  # already serialized: see chunk_codec

    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:
        self._authenticate(context, request)
        return pb.ReleaseResponse(released=self.leases.release(request.request_id))

    def Renew(self, request: pb.RenewRequest, context: grpc.ServicerContext) -> pb.RenewResponse:
        self._authenticate(context, request)
        if not 0 < len(request.request_ids) <= MAX_RENEW_IDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request_ids must hold 1 to {MAX_RENEW_IDS} ids, got "
                                                            f"{len(request.request_ids)}")
        renewal = self.leases.renew(list(request.request_ids))
        return pb.RenewResponse(ttl_s=renewal.ttl_s, not_found_request_ids=sorted(renewal.not_found))


class GrpcKVSender(KVSender):
    """Serves this replica's leases on `bind_address` (cluster-internal; port 0 picks a free one); over mutual TLS
    when `tls` is set (a client without a certificate of its CA is refused in the handshake)."""

    def __init__(self, secret: str, bind_address: str = "127.0.0.1:0", advertise_host: str | None = None,
                 lease_ttl_s: float = 30.0, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_workers: int = 8,
                 expiry_interval_s: float = 1.0, tls: KVTLS | None = None, **_):
        if not secret:
            raise ValueError("the KV service needs a shared secret (kv_secret)")
        if not 0 < chunk_bytes <= MAX_MESSAGE_BYTES // 2:
            raise ValueError(f"chunk_bytes must be in (0, {MAX_MESSAGE_BYTES // 2}], got {chunk_bytes}")
        self.leases = LeaseTable(lease_ttl_s)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=SERVER_PING_OPTIONS)
        self.servicer = servicer = _KVTransferServicer(self.leases, secret, chunk_bytes)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Pull": grpc.unary_stream_rpc_method_handler(
                servicer.Pull, request_deserializer=lenient_parser(pb.PullRequest), response_serializer=_identity),
            "Release": grpc.unary_unary_rpc_method_handler(
                servicer.Release, request_deserializer=lenient_parser(pb.ReleaseRequest),
                response_serializer=pb.ReleaseResponse.SerializeToString),
            "Renew": grpc.unary_unary_rpc_method_handler(
                servicer.Renew, request_deserializer=lenient_parser(pb.RenewRequest),
                response_serializer=pb.RenewResponse.SerializeToString),
            **self._extra_handlers(servicer),
        })])
        if tls is None:
            port = self.server.add_insecure_port(bind_address)
        else:
            port = self.server.add_secure_port(bind_address, tls.server_credentials())
        if port == 0:
            raise OSError(f"KV service could not bind {bind_address}")
        host = advertise_host or bind_address.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        self.server.start()
        self._stop = threading.Event()
        self._expiry = threading.Thread(target=self._expire_loop, args=(expiry_interval_s,), daemon=True,
                                        name="kv-lease-expiry")
        self._expiry.start()
        log.info("KV service listening on %s (%s)", self.address, "mutual TLS" if tls else "plaintext")

    def _extra_handlers(self, servicer: _KVTransferServicer) -> dict[str, grpc.RpcMethodHandler]:
        """More KVTransfer methods, for backends that move the bytes elsewhere (process_group_backend.py)."""
        return {}

    def _expire_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            expired = self.leases.expire()
            if expired:
                log.warning("freed %d unclaimed KV lease(s) past their %.0f s lease", expired, self.leases.ttl_s)

    def close(self) -> None:
        self._stop.set()
        self.server.stop(grace=None)


class GrpcKVReceiver(KVReceiver):
    """Pulls leases from any prefill replica's KV service; one channel per address, shared (peer_channels.py);
    over mutual TLS when `tls` is set."""

    def __init__(self, secret: str, tls: KVTLS | None = None, **_):
        if not secret:
            raise ValueError("the KV service needs a shared secret (kv_secret)")
        self.metadata = ((SECRET_METADATA_KEY, secret),)
        self.channels = PeerChannels(lambda address: secure_channel(
            address, tls, [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), *KEEPALIVE_OPTIONS]))

    @contextmanager
    def _stub(self, address: str) -> Iterator[pb_grpc.KVTransferStub]:
        with self.channels.use(address) as channel:
            yield pb_grpc.KVTransferStub(channel)

    def pull(self, ticket: KVTicket, expected: KVLayout, timeout_s: float = 30.0):
        request = pb.PullRequest(request_id=ticket.request_id, expected_geometry=_geometry(expected),
                                 expected_dtype=expected.dtype)
        if not expected.num_tokens:  # the ticket says how many tokens were leased: a header may claim no more
            expected = dataclasses.replace(expected, num_tokens=ticket.layout.num_tokens)
        try:
            with self.channels.use(ticket.address) as channel:
                raw_pull = channel.unary_stream(f"/{SERVICE_NAME}/Pull", response_deserializer=None,  # bytes kept
                                                request_serializer=pb.PullRequest.SerializeToString)
                return self._receive(raw_pull(request, metadata=self.metadata, timeout=timeout_s), ticket, expected)
        except KVTransferError as e:
            if e.code is StatusCode.UNAVAILABLE:  # the replica is gone or unreachable: dial again next time
                self.channels.forget(ticket.address)
            raise

    @staticmethod
    def _receive(call, ticket: KVTicket, expected: KVLayout):
        assembler = None
        try:
            for raw in call:
                if is_header_message(raw):
                    if assembler is not None:
                        raise KVWireError("KV stream sent a second header")
                    try:
                        h = pb.KVMessage.FromString(raw).header
                    except DecodeError as e:
                        raise KVWireError(f"malformed KV header: {e}") from e
                    if h.request_id != ticket.request_id:
                        raise KVWireError(f"KV header is for request {h.request_id[:200]!r}, "
                                          f"not {ticket.request_id!r}")
                    assembler = KVAssembler(expected, _layout(h.geometry, h.dtype, h.num_tokens), h.total_bytes)
                elif assembler is None:
                    raise KVWireError("KV stream sent a chunk before its header")
                else:
                    try:
                        assembler.add(decode_chunk_message(raw))
                    except ValueError as e:
                        raise KVWireError(f"malformed KV chunk: {e}") from e
        except grpc.RpcError as e:
            raise KVTransferError(StatusCode.of_grpc(e.code()), e.details() or "KV pull failed") from e
        except KVWireError as e:
            call.cancel()  # stop the rest of a stream we refuse
            raise KVTransferError(StatusCode.DATA_LOSS, str(e)) from e
        if assembler is None:
            raise KVTransferError(StatusCode.DATA_LOSS, "KV stream ended without a header")
        try:
            return assembler.finish()
        except KVWireError as e:
            raise KVTransferError(StatusCode.DATA_LOSS, str(e)) from e

    def release(self, ticket: KVTicket) -> bool:
        try:
            with self._stub(ticket.address) as stub:
                response = stub.Release(pb.ReleaseRequest(request_id=ticket.request_id), metadata=self.metadata,
                                        timeout=10.0)
        except grpc.RpcError as e:
            raise KVTransferError(StatusCode.of_grpc(e.code()), e.details() or "KV release failed") from e
        return response.released

    def renew(self, address: str, request_ids: list[str], timeout_s: float = 10.0) -> LeaseRenewal:
        ttls, not_found = [], set()
        for start in range(0, len(request_ids), MAX_RENEW_IDS):
            batch = request_ids[start:start + MAX_RENEW_IDS]
            try:
                with self._stub(address) as stub:
                    response = stub.Renew(pb.RenewRequest(request_ids=batch), metadata=self.metadata,
                                          timeout=timeout_s)
            except grpc.RpcError as e:
                raise KVTransferError(StatusCode.of_grpc(e.code()), e.details() or "KV lease renewal failed") from e
            ttls.append(response.ttl_s)
            not_found.update(response.not_found_request_ids)
        return LeaseRenewal(min(ttls, default=0.0), frozenset(not_found))

    def close(self) -> None:
        self.channels.close()


register_backend("grpc", GrpcKVSender, GrpcKVReceiver)

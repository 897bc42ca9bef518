"""A 2-rank torch.distributed process group between one prefill replica (rank 0) and one decode replica (rank 1),
built directly from a TCPStore, and the KV transfer over it.

Why not `init_process_group`: it makes one global group per process, while a replica pairs with every replica of the
other pool, and each pair must be able to fail and be rebuilt on its own. So each pair gets its own backend object,
`ProcessGroupNCCL` or `ProcessGroupGloo` constructed directly over a `PrefixStore` (the pair's random group id) of the
prefill replica's `TCPStore`.

A transfer is K, then V: each [L, H, T, D] (layers, KV heads, tokens, head_dim), contiguous, in the cache dtype, one
point-to-point message each. With NCCL the bytes go GPU to GPU on a CUDA stream of the group's own, so a transfer
neither waits behind nor stalls the model's stream; gloo moves CPU tensors (CUDA KV is staged through the host).
NCCL pairs the point-to-point messages of two ranks in the order they were issued, so a group carries one transfer at
a time: its callers serialize. Any failure or timeout leaves a group unusable (a half-done message would pair with
the next one): the caller closes it and builds a new one.

The TCPStore has no authentication: whoever reaches its port can read the keys (the group ids) and join a group as
either rank. So a group carries no KV until both ends have proven they hold the KV secret: each sends a fresh nonce,
and answers the other's with HMAC-SHA256(secret, its rank, the group id, that nonce). A peer without the secret
fails the build (PairGroupError) on both sides; it can delay a pair (the decode side then opens a new group), never
receive a byte of KV.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import os
import secrets
import socket
import time

import torch
import torch.distributed as dist

from overfill.transport.wire import DTYPES, KVLayout

BACKENDS = ("gloo", "nccl")
PREFILL_RANK, DECODE_RANK = 0, 1
KEY_TAG, VALUE_TAG, HANDSHAKE_TAG = 0, 1, 2
NONCE_BYTES = 32


class PairGroupError(RuntimeError):
    """Building the group, or a transfer on it, failed or timed out; the group must be closed and rebuilt."""


class StoreHost:
    """The prefill replica's TCPStore, shared by all its pairs (each under its own key prefix).

    The listening socket is bound here, on `host` and a free port, and handed to the store, so the store is reachable
    exactly where the KV service is (the cluster-internal bind host) and nowhere else.
    """

    def __init__(self, host: str, timeout_s: float):
        listener = socket.create_server((host, 0))
        self.port = listener.getsockname()[1]
        self.address = f"{host}:{self.port}"
        try:
            self.store = dist.TCPStore(host, self.port, None, True, datetime.timedelta(seconds=timeout_s),
                                       wait_for_workers=False, master_listen_fd=listener.fileno())
        except BaseException:
            listener.close()
            raise
        listener.detach()  # the store owns the socket now and closes it when it is destroyed

    def close(self) -> None:
        """Drop this reference; the store stops once the groups built on it are gone too."""
        self.store = None


def connect_store(address: str, timeout_s: float) -> dist.Store:
    """A client of the TCPStore at host:port (the decode side of the rendezvous)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PairGroupError(f"store address {address!r} is not host:port")
    try:
        return dist.TCPStore(host, int(port), None, False, datetime.timedelta(seconds=max(timeout_s, 0.1)))
    except RuntimeError as e:
        raise PairGroupError(f"could not reach the TCPStore at {address}: {e}") from e


def _build_backend(backend: str, store: dist.Store, rank: int, host: str, timeout_s: float):
    """The backend object of a 2-rank group. Gloo connects both ranks here (blocks until the peer joins, up to the
    timeout); NCCL connects lazily at the first transfer."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "gloo":
        if not dist.is_gloo_available():
            raise PairGroupError("this torch build has no gloo")
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]  # listen on the bind host only
        return dist.ProcessGroupGloo(store, rank, 2, options)
    if backend == "nccl":
        if not dist.is_nccl_available():
            raise PairGroupError("this torch build has no NCCL (kv.transport=nccl needs CUDA torch and GPUs)")
        # NOTE: by default the NCCL watchdog kills the whole process when an operation fails or times out; a replica
        # must survive a failed transfer, so only the communicator is aborted (mode 2, CleanUpOnly) and the error
        # reaches the waiting thread. An operator's explicit setting wins.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        options = dist.ProcessGroupNCCL.Options()
        options.is_high_priority_stream = False
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, 2, options)
    raise ValueError(f"process-group backend {backend!r} is not one of: {', '.join(BACKENDS)}")


class PairGroup:
    """One side of a pair's group. `device`: this replica's model device; NCCL sends and receives there (the KV stays
    on the GPU), gloo sends and receives host tensors. Not thread-safe: one transfer at a time, by one caller."""

    def __init__(self, backend: str, store: dist.Store, group_id: str, rank: int, host: str, timeout_s: float,
                 secret: str, device: str | torch.device = "cpu"):
        if rank not in (PREFILL_RANK, DECODE_RANK):
            raise ValueError(f"rank must be {PREFILL_RANK} (prefill) or {DECODE_RANK} (decode), got {rank}")
        self.backend, self.group_id, self.rank, self.peer = backend, group_id, rank, 1 - rank
        self.timeout_s = timeout_s
        self.device = torch.device(device)
        if backend == "nccl" and self.device.type != "cuda":
            raise PairGroupError(f"the nccl transport needs the model on a CUDA device, not {self.device}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.wire_device = self.device if backend == "nccl" else torch.device("cpu")
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._store = dist.PrefixStore(f"overfill-kv/{group_id}/", store)
        try:
            self._backend = _build_backend(backend, self._store, rank, host, timeout_s)
        except (RuntimeError, ValueError) as e:
            if isinstance(e, PairGroupError):
                raise
            raise PairGroupError(f"building the {backend} group {group_id[:8]} (rank {rank}) failed: {e}") from e
        try:
            self._prove_secret(secret.encode())
        except PairGroupError:
            self.close()
            raise
        self.num_transfers = 0

    def _prove_secret(self, secret: bytes) -> None:
        """Both ends show they hold the KV secret (see the module docstring). Rank 0 sends first and rank 1 receives
        first: NCCL would deadlock on two sends issued against each other."""
        deadline = time.monotonic() + self.timeout_s
        nonce = secrets.token_bytes(NONCE_BYTES)

        def exchange(mine: bytes) -> bytes:
            outgoing = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(self.wire_device)
            incoming = torch.empty(len(mine), dtype=torch.uint8, device=self.wire_device)
            steps = [("send", outgoing), ("recv", incoming)]
            with self._on_stream():
                for op, tensor in steps if self.rank == PREFILL_RANK else steps[::-1]:
                    self._wait(self._call(op, [tensor], self.peer, HANDSHAKE_TAG), deadline, "handshake")
                if self.stream is not None:
                    self.stream.synchronize()
            return bytes(incoming.cpu().tolist())

        peer_nonce = exchange(nonce)
        peer_proof = exchange(self._proof(secret, self.rank, peer_nonce))
        if not hmac.compare_digest(peer_proof, self._proof(secret, self.peer, nonce)):
            raise PairGroupError(f"the peer that joined {self.backend} group {self.group_id[:8]} as rank {self.peer} "
                                 f"does not hold the KV secret: no KV is sent or received on this group")

    def _proof(self, secret: bytes, rank: int, nonce: bytes) -> bytes:
        return hmac.new(secret, f"{rank}/{self.group_id}/".encode() + nonce, hashlib.sha256).digest()

    # ---- transfers ----------------------------------------------------------------------------------------------

    def send(self, k: torch.Tensor, v: torch.Tensor, ready: torch.cuda.Event | None = None) -> None:
        """Send k, v ([L, H, T, D] each) to the peer; returns once both are sent. `ready`: an event recorded where
        k and v are complete on the stream that wrote them (CUDA)."""
        deadline = time.monotonic() + self.timeout_s
        with self._on_stream():
            if ready is not None:
                if self.stream is not None:
                    self.stream.wait_event(ready)
                else:
                    ready.synchronize()
            tensors = [t.to(self.wire_device).contiguous() for t in (k, v)]  # NCCL: no copy; gloo: to the host
            works = [self._call("send", [tensor], self.peer, tag) for tag, tensor in zip((KEY_TAG, VALUE_TAG), tensors)]
            for work in works:
                self._wait(work, deadline, "send")
            if self.stream is not None:
                self.stream.synchronize()
        self.num_transfers += 1

    def recv(self, layout: KVLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Receive the k, v the peer sends next: each [L, H, T, D] of `layout`, on `wire_device`."""
        deadline = time.monotonic() + self.timeout_s
        shape = (layout.num_layers, layout.num_kv_heads, layout.num_tokens, layout.head_dim)
        # Allocated on this thread's current stream (which frees them later); the group's stream waits for it.
        k = torch.empty(shape, dtype=DTYPES[layout.dtype], device=self.wire_device)  # [L, H, T, D]
        v = torch.empty(shape, dtype=DTYPES[layout.dtype], device=self.wire_device)  # [L, H, T, D]
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with self._on_stream():
            works = [self._call("recv", [tensor], self.peer, tag) for tag, tensor in zip((KEY_TAG, VALUE_TAG), (k, v))]
            for work in works:
                self._wait(work, deadline, "receive")
            if self.stream is not None:
                self.stream.synchronize()
        self.num_transfers += 1
        return k, v

    def close(self) -> None:
        """Abort pending operations and drop the connection (the peer's pending operations then fail)."""
        backend, self._backend = getattr(self, "_backend", None), None
        if backend is not None:
            with contextlib.suppress(RuntimeError):
                backend.abort()

    # ---- helpers ------------------------------------------------------------------------------------------------

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _call(self, op: str, tensors: list[torch.Tensor], peer: int, tag: int):
        if self._backend is None:
            raise PairGroupError(f"{self.backend} group {self.group_id[:8]} is closed")
        try:
            return getattr(self._backend, op)(tensors, peer, tag)
        except RuntimeError as e:
            raise PairGroupError(f"{op} on {self.backend} group {self.group_id[:8]} failed: {e}") from e

    def _wait(self, work, deadline: float, what: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PairGroupError(f"{what} on {self.backend} group {self.group_id[:8]} timed out after "
                                 f"{self.timeout_s:g} s")
        try:
            completed = work.wait(datetime.timedelta(seconds=remaining))  # blocks this thread, not other streams
        except RuntimeError as e:  # the peer went away, the link broke, or the timeout passed
            raise PairGroupError(f"{what} on {self.backend} group {self.group_id[:8]} failed: {e}") from e
        if completed is False:
            raise PairGroupError(f"{what} on {self.backend} group {self.group_id[:8]} timed out after "
                                 f"{self.timeout_s:g} s")

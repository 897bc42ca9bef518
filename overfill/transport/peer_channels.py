"""The decode side's gRPC channels to prefill replicas' KV services: one per address, shared by every call to it.

Prefill replicas come and go (autoscaling, restarts, a new address each time), so the table is bounded: a channel
leaves it when a call to its address ends UNAVAILABLE (the replica is gone, or unreachable: the next call dials
again) or when it is the least recently used of more than `max_peers`. A channel that left the table is closed once
the last call using it has ended, never under a call in flight.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

MAX_PEERS = 64  # prefill replicas one decode replica keeps a channel to


@dataclass
class _Peer:
    channel: grpc.Channel
    num_calls: int = 0       # calls using the channel now
    forgotten: bool = False  # out of the table: closed when num_calls drops to 0


class PeerChannels:
    def __init__(self, dial: Callable[[str], grpc.Channel], max_peers: int = MAX_PEERS):
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, got {max_peers}")
        self._dial, self.max_peers = dial, max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._peers)

    @contextmanager
    def use(self, address: str) -> Iterator[grpc.Channel]:
        """The channel to `address` for one call (or one stream: the whole iteration belongs inside)."""
        with self._lock:
            peer = self._peers.get(address)
            if peer is None:
                peer = self._peers[address] = _Peer(self._dial(address))
                while len(self._peers) > self.max_peers:
                    _, oldest = self._peers.popitem(last=False)
                    self._retire(oldest)
            self._peers.move_to_end(address)
            peer.num_calls += 1
        try:
            yield peer.channel
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.UNAVAILABLE:
                self.forget(address)
            raise
        finally:
            with self._lock:
                peer.num_calls -= 1
                if peer.forgotten and peer.num_calls == 0:
                    peer.channel.close()

    def forget(self, address: str) -> None:
        """Drop the channel to `address` (closed once unused); the next call dials again."""
        with self._lock:
            peer = self._peers.pop(address, None)
            if peer is not None:
                self._retire(peer)

    def close(self) -> None:
        with self._lock:
            for peer in self._peers.values():
                self._retire(peer)
            self._peers.clear()

    @staticmethod
    def _retire(peer: _Peer) -> None:
        """Under the lock."""
        peer.forgotten = True
        if peer.num_calls == 0:
            peer.channel.close()

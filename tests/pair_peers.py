"""Peers for tests/test_kv_pair_transport.py that run in their own (spawned) process and die between K and V.
Kept apart from the test module so a child imports only torch and the transport."""

import os
import time

import torch

from overfill.transport.base import make_receiver, make_sender
from overfill.transport.pair_group import KEY_TAG, PairGroup

DIED_MID_TRANSFER = 17  # the exit status of a peer that died where it was meant to (an exception exits with 1)


def random_kv(dtype=torch.float32, layers=4, heads=2, tokens=300, head_dim=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (layers, heads, tokens, head_dim)
    return (torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype))


def _send_only_the_key_then_die(group, k, v, ready=None):
    group._wait(group._call("send", [k.contiguous()], group.peer, KEY_TAG), time.monotonic() + 10, "send")
    os._exit(DIED_MID_TRANSFER)


def _receive_only_the_key_then_die(group, layout):
    key = torch.empty(layout.num_layers, layout.num_kv_heads, layout.num_tokens, layout.head_dim,
                      dtype=getattr(torch, layout.dtype))
    group._wait(group._call("recv", [key], group.peer, KEY_TAG), time.monotonic() + 10, "receive")
    os._exit(DIED_MID_TRANSFER)


def dying_sender(secret: str, timeout_s: float, connection) -> None:
    """A prefill replica whose process exits right after sending K: sends the parent a ticket, then serves."""
    PairGroup.send = _send_only_the_key_then_die
    sender = make_sender("gloo", secret=secret, transfer_timeout_s=timeout_s)
    k, v = random_kv()
    connection.send(sender.publish("doomed", k, v))
    connection.recv()  # the parent never answers: this process ends inside the send


def dying_receiver(secret: str, timeout_s: float, ticket, expected) -> None:
    """A decode replica whose process exits right after receiving K."""
    PairGroup.recv = _receive_only_the_key_then_die
    make_receiver("gloo", secret=secret, transfer_timeout_s=timeout_s).pull(ticket, expected)

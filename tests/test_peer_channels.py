"""The decode side's channel table: bounded, a gone peer forgotten, and no channel closed under a call in flight."""

import grpc
import pytest

from overfill.transport.peer_channels import PeerChannels


class FakeChannel:
    def __init__(self, address):
        self.address, self.closed = address, False

    def close(self):
        self.closed = True


class Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


def test_one_channel_per_address_reused():
    dialled = []
    channels = PeerChannels(lambda a: dialled.append(a) or FakeChannel(a))
    for _ in range(3):
        with channels.use("10.0.0.1:7000") as channel:
            assert channel.address == "10.0.0.1:7000"
    assert dialled == ["10.0.0.1:7000"]


def test_past_max_peers_the_least_recently_used_channel_is_closed_once_its_call_ends():
    channels = PeerChannels(FakeChannel, max_peers=2)
    with channels.use("a") as a:
        with channels.use("b"):
            pass
        with channels.use("c"):  # "a" is the oldest, but its call is in flight: out of the table, still open
            pass
        assert channels.addresses == ["b", "c"] and not a.closed
    assert a.closed
    with channels.use("a") as again:  # dialled afresh
        assert again is not a
    assert channels.addresses == ["c", "a"]


def test_a_call_ending_unavailable_forgets_its_peer_and_the_next_call_dials_again():
    channels = PeerChannels(FakeChannel)
    with pytest.raises(Unavailable):
        with channels.use("gone") as first:
            raise Unavailable()
    assert first.closed and channels.addresses == []
    with channels.use("gone") as second:
        assert second is not first and not second.closed


def test_close_closes_idle_channels_and_busy_ones_when_their_calls_end():
    channels = PeerChannels(FakeChannel)
    with channels.use("idle") as idle:
        pass
    with channels.use("busy") as busy:
        channels.close()
        assert idle.closed and not busy.closed
    assert busy.closed and channels.addresses == []

"""The Python client's errors name their request, also those gRPC raises on the client side (its own deadline),
against the model-free stub server."""

import asyncio

import pytest

from loadtest.stub_server import StubConfig, start_stub
from overfill.client import AsyncOverFillClient, OverFillClient, OverFillError


async def deadline_error(port: int, **kwargs) -> OverFillError:
    """A server that needs 5 s for its first token and a client that waits 0.3 s."""
    async with AsyncOverFillClient(f"127.0.0.1:{port}", timeout_s=0.3) as client:
        with pytest.raises(OverFillError) as error:
            [piece async for piece in client.generate("slow", max_tokens=4, **kwargs)]
    return error.value


def test_a_client_side_deadline_names_the_request_given_or_generated():
    async def run():
        server, port, _ = await start_stub(StubConfig(ttft_s=5.0))
        try:
            named = await deadline_error(port, request_id="req-42")
            unnamed = await deadline_error(port)
        finally:
            await server.stop(None)
        return named, unnamed

    named, unnamed = asyncio.run(run())
    assert named.code == "DEADLINE_EXCEEDED" and named.request_id == "req-42" and "'req-42'" in named.message
    assert unnamed.code == "DEADLINE_EXCEEDED" and len(unnamed.request_id) == 32
    assert repr(unnamed.request_id) in unnamed.message


def test_the_sync_client_sends_its_generated_request_id_and_reports_it():
    async def start():
        return await start_stub(StubConfig(ttft_s=0.0, itl_s=0.0))

    loop = asyncio.new_event_loop()
    server, port, _ = loop.run_until_complete(start())
    try:
        future = loop.run_in_executor(None, lambda: list(OverFillClient(f"127.0.0.1:{port}").generate(
            "fast", max_tokens=3)))
        pieces = loop.run_until_complete(future)
    finally:
        loop.run_until_complete(server.stop(None))
        loop.close()
    ids = {piece.request_id for piece in pieces}
    assert len(ids) == 1 and len(ids.pop()) == 32  # the id the client made, echoed on every piece

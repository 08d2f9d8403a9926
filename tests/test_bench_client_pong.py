"""A receiving client never waits on its sender to answer a ping, and the pong is not lost."""

from __future__ import annotations

import trio
import trio.testing

from bench.client import Client, Stats
from bench.wire import PING_FRAME, PONG, pongs_for, ws_pongs


async def test_a_ping_during_a_send_is_answered_right_after_it() -> None:
    ours, server = trio.testing.memory_stream_pair()
    client = Client(ours, 0, Stats(), check=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.receive_loop)
        async with client._send_lock:  # a sender mid-send (say, blocked by a server that is not reading)
            await server.send_all(PING_FRAME)
            await trio.testing.wait_all_tasks_blocked()
            assert client._owed == PONG  # the receive loop moved on instead of waiting for the lock
        await client.send(b"frame")
        assert await server.receive_some() == b"frame" + PONG
        await server.send_all(PING_FRAME)  # nobody sending: answered at once
        assert await server.receive_some() == PONG
        nursery.cancel_scope.cancel()


async def test_a_websocket_ping_is_answered_with_its_payload() -> None:
    """uvicorn pings at the websocket level every 20 s and closes a connection that has not answered in 20 s."""
    ours, server = trio.testing.memory_stream_pair()
    client = Client(ours, 0, Stats(), check=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.receive_loop)
        await server.send_all(b"\x89\x04abcd" + PING_FRAME)  # a websocket ping, then an Engine.IO one
        assert await server.receive_some() == PONG + b"\x8a\x84\x00\x00\x00\x00abcd"
        nursery.cancel_scope.cancel()


def test_pongs_echo_each_ping_and_skip_a_truncated_one() -> None:
    assert ws_pongs(b"x\x89\x00y\x89\x02hi") == b"\x8a\x80\x00\x00\x00\x00" + b"\x8a\x82\x00\x00\x00\x00hi"
    assert ws_pongs(b"\x89\x05abc") == b""  # split across reads: the next ping is answered
    assert pongs_for(b"no pings here") == b""

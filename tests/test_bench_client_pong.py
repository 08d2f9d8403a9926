"""A receiving client never waits on its sender to answer a ping, and the pong is not lost."""

from __future__ import annotations

import trio
import trio.testing

from bench.client import Client, Stats
from bench.wsclient import PING_FRAME, PONG


async def test_a_ping_during_a_send_is_answered_right_after_it() -> None:
    ours, server = trio.testing.memory_stream_pair()
    client = Client(ours, 0, Stats(), check=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.receive_loop)
        async with client._send_lock:  # a sender mid-send (say, blocked by a server that is not reading)
            await server.send_all(PING_FRAME)
            await trio.testing.wait_all_tasks_blocked()
            assert client._pong_owed  # the receive loop moved on instead of waiting for the lock
        await client.send(b"frame")
        assert await server.receive_some() == b"frame" + PONG
        await server.send_all(PING_FRAME)  # nobody sending: answered at once
        assert await server.receive_some() == PONG
        nursery.cancel_scope.cancel()

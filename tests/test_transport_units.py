"""The transport's timing and buffering, without a server: the hub's heartbeat on trio's autojump clock, a
session's long-poll, and the outbox writing into a real socket pair.

Times here are virtual (``autojump_clock``): 25 s of heartbeat take no real time, and "nothing happened
before the deadline" is a fact about the virtual clock, not a sleep.
"""

from __future__ import annotations

import socket
from typing import cast

import trio
import trio.testing

from server.hub import Hub, HubSettings
from server.metrics import Metrics
from server.outbox import Flusher, Outbox
from server.rooms import RoomRegistry
from storage.engine import StorageEngine

# Nothing in these tests reads or writes storage (no room, no message): the hub only needs one to exist.
NO_STORAGE = cast(StorageEngine, object())
SETTINGS = HubSettings(ping_interval=25.0, ping_timeout=20.0, connect_timeout=45.0)


def make_hub() -> Hub:
    return Hub(SETTINGS, RoomRegistry(NO_STORAGE), Metrics(), NO_STORAGE)


async def test_heartbeat_pings_at_the_interval_and_closes_a_silent_session(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = make_hub()
    await nursery.start(hub.run)
    start = trio.current_time()
    session = hub.open_session("token")
    assert session is not None
    session.user = "alice"  # as after a Socket.IO CONNECT: the connect timeout no longer applies
    assert await session.poll() == b"2", "the first ping comes when the poll is answered"
    assert trio.current_time() - start == SETTINGS.ping_interval
    # No pong: the session is closed ping_timeout after the ping, not before.
    await trio.sleep(SETTINGS.ping_timeout - 0.5)
    assert not session.closed
    await trio.sleep(1.0)
    assert session.closed and session.sid not in hub.sessions
    assert "ping timeout" in session.close_reason


async def test_a_pong_keeps_the_session_and_schedules_the_next_ping(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = make_hub()
    await nursery.start(hub.run)
    session = hub.open_session("token")
    assert session is not None
    session.user = "alice"
    for _ in range(3):
        assert await session.poll() == b"2"
        pinged = trio.current_time()
        await trio.sleep(5.0)
        await hub.on_packet(session, 3, "")  # pong, 5 s after the ping
        assert await session.poll() == b"2"
        assert trio.current_time() - pinged == 5.0 + SETTINGS.ping_interval
        await hub.on_packet(session, 3, "")
    assert not session.closed


async def test_a_session_that_never_connects_is_closed_at_the_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = make_hub()
    await nursery.start(hub.run)
    start = trio.current_time()
    session = hub.open_session(None)
    assert session is not None
    while not session.closed:  # answer pings, never CONNECT
        if await session.poll() == b"2":
            await hub.on_packet(session, 3, "")
    assert trio.current_time() - start == SETTINGS.connect_timeout


async def test_the_outbox_writes_many_pushes_in_one_syscall_and_waits_out_a_full_socket(
    nursery: trio.Nursery,
) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    flusher = Flusher()
    await nursery.start(flusher.run)
    overflows: list[str] = []
    outbox = Outbox(ours.fileno(), flusher, max_bytes=64 << 20, max_messages=1 << 20, on_overflow=overflows.append)
    nursery.start_soon(outbox.run_writer)
    for i in range(100):
        outbox.push(b"%03d" % i)
    await trio.testing.wait_all_tasks_blocked()
    assert flusher.writes == 1, "a hundred pushes in one tick: one writev"
    assert theirs.recv(1000) == b"".join(b"%03d" % i for i in range(100))
    # More than the kernel buffers hold: the outbox blocks, its writer waits for writability, nothing is lost.
    chunk = b"x" * 65536
    for _ in range(64):
        outbox.push(chunk)
    await trio.testing.wait_all_tasks_blocked()
    assert outbox.blocked and outbox.nbytes > 0
    received = 0
    with trio.fail_after(10):  # a hang guard
        while received < 64 * 65536:
            await trio.lowlevel.wait_readable(theirs)
            received += len(theirs.recv(1 << 20))
    await trio.testing.wait_all_tasks_blocked()
    assert outbox.nbytes == 0 and not outbox.blocked and not overflows
    ours.close()
    theirs.close()

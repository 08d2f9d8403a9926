"""Reconnect recovery (issue 12, item 4): a client away mid-bombing gets every message of its room exactly once.

Three members bomb one room with acked sends while a reader is disconnected and reconnects; afterwards the
reader's view is compared with the room's full history (REST, ``after_seq`` paging): every message exactly
once, in seq order. Two readers, one per real client library:

* **python-socketio** (the load test's stack, :class:`tests.sio_peer.Peer`) does not speak Socket.IO's
  connection state recovery. It reconnects as a new session and catches up the way any MinitalkChat client
  can (contract §8): ``GET /api/chatrooms/:roomId/messages?after_seq=<last seen seq>`` page by page, then
  merges the live events, de-duplicating by seq. That works against today's server.
* **socket.io-client 4.8.1 on Node** (the frontend's stack, :mod:`tests.node_peer`) relies on connection state
  recovery only: the same ``Socket`` reconnects, sends back the ``pid`` and last ``offset`` it was given, and
  must come back with ``socket.recovered === true`` and the missed messages, with no REST call
  (:class:`RecoveryMissing` when it does not).

Disconnects last 5 s (the issue's short case) or, opt-in with ``MINITALK_SLOW_TESTS=1``, 5 minutes in real
time: the clients are real sockets in threads and a Node process, and an ``autojump_clock`` only moves trio's
clock, so it would jump the server's ping timers past the clients' real ones instead of shortening the wait.
The server-restart case stops a ``python -m server`` process with SIGTERM and starts it again on the same
database and port, so both clients reconnect to the same URL.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from tests.chat_load import read_history
from tests.conftest import RunningServer, bearer
from tests.node_peer import NodeClient, ReferenceServer, node_or_skip
from tests.raw_client import raw_client
from tests.server_process import start_server_process
from tests.sio_peer import Peer, make_room, make_users, wait_until

SENDERS = ("s0", "s1", "s2")
READERS = ("py", "node")
SHORT_AWAY = 5.0  # the "disconnected mid-bombing for 5 s"
LONG_AWAY = 300.0  # and "for 5 minutes": real time, opt-in
SEEN_BEFORE_DROP = 50  # "mid-bombing": the reader has seen this many messages when it drops
SEEN_AFTER_RETURN = 50  # and sees this many live ones after it is back before the bombing stops
MISSED_AFTER_RESTART = 100  # messages the restarted server stores before the python reader comes back
PAGE = 100  # REST catch-up page size: a 5 s absence at ~300 messages/s spans many pages

slow_opt_in = pytest.mark.skipif(
    os.environ.get("MINITALK_SLOW_TESTS") != "1", reason="5-minute real-time disconnect: set MINITALK_SLOW_TESTS=1"
)
AWAYS = [
    pytest.param(SHORT_AWAY, id="5s"),
    pytest.param(LONG_AWAY, id="5min", marks=[pytest.mark.slow, slow_opt_in, pytest.mark.timeout(LONG_AWAY + 120)]),
]


class RecoveryMissing(AssertionError):
    """The reconnected socket.io-client socket reports ``recovered`` false: the server did not recover it."""


def pace_for(away: float) -> float:
    # Per sender: 3 senders at 10 ms ≈ 300 messages/s, ~1500 missed in 5 s; over 5 minutes 200 ms ≈ 15/s,
    # ~4500 missed, so the long run is not a throughput test.
    return 0.01 if away <= 10 else 0.2


# -- the room and its bombing ------------------------------------------------------------------------------


class Room:
    def __init__(self, url: str, tokens: dict[str, str], room_id: str) -> None:
        self.url = url
        self.tokens = tokens
        self.room_id = room_id

    @classmethod
    async def create(cls, url: str) -> Room:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            tokens = await make_users(http, [*SENDERS, *READERS])
            room_id = await make_room(http, tokens["s0"], [*SENDERS[1:], *READERS])
        return cls(url, tokens, room_id)

    async def history(self) -> list[tuple[int, str]]:
        rows = await read_history(self.url, self.tokens["s0"], self.room_id)
        return [(row["seq"], row["id"]) for row in rows]


class Bombing:
    """Every sender sends with acks, paced, until :meth:`stop` or the server goes away; at most ``cap`` each."""

    def __init__(self, room: Room, *, pace: float, first: int = 0, cap: int = 20_000) -> None:
        self.room = room
        self.pace = pace
        self.first = first
        self.cap = cap
        self.sent = 0
        self.answered = 0  # acks, ok or not
        self._stop = trio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for name in SENDERS:
                nursery.start_soon(self._sender, name)

    async def _sender(self, name: str) -> None:
        try:
            async with raw_client(self.room.url, self.room.tokens[name]) as client, trio.open_nursery() as inner:
                inner.start_soon(self._count_acks, client)
                for i in range(self.first, self.first + self.cap):
                    if self._stop.is_set():
                        break
                    payload = {"roomId": self.room.room_id, "content": f"{name}-{i}", "clientMsgId": f"{name}-{i}"}
                    await client.emit("send_message", payload, ack_id=i)
                    self.sent += 1
                    await trio.sleep(self.pace)
                # The last acks: each comes after its batch's commit, milliseconds away; 10 s is a hang guard.
                with trio.move_on_after(10):
                    await wait_until(lambda: self.answered >= self.sent, within=10)
                inner.cancel_scope.cancel()
        except* (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError):
            pass  # the server was stopped under us: that is what the restart test does

    async def _count_acks(self, client: Any) -> None:
        while True:
            event, _ = await client.next_event()
            if event.startswith("ack:"):
                self.answered += 1


# -- the python-socketio reader: reconnect as a new session, catch up through REST ------------------------


class CatchUpReader:
    """The load test's client that reconnects as a new session and catches up with ``after_seq`` paging.

    ``view`` is what it would show: each source in the order the client consumes it (a session's live events,
    then the REST pages fetched after the next connect, then that session's live events), a seq it already
    shows skipped (it must carry the same id). Each session's live stream is also kept raw, so a duplicate
    or a reordering by the server itself is caught rather than hidden by the merge.
    """

    def __init__(self, room: Room, name: str = "py") -> None:
        self.room = room
        self.name = name
        self.sessions: list[Peer] = []
        self.folded: list[tuple[int, str]] = []  # finished sources, in consumption order
        self.rest_pages = 0
        self.arities: set[int] = set()  # how many arguments its `message` events carried

    @property
    def peer(self) -> Peer:
        return self.sessions[-1]

    def live(self, peer: Peer | None = None) -> list[tuple[int, str]]:
        received = (peer or self.peer).received("message")
        return [(m["seq"], m["id"]) for m in received if m["roomId"] == self.room.room_id]

    async def connect(self) -> None:
        peer = Peer(self.name)
        record = peer._recorder("message")

        def on_message(*args: Any) -> None:
            # The load test's handlers take one argument: an extra one (a recovery offset) would raise TypeError
            # in python-socketio's handler call, which python-engineio logs as "message handler error" and the
            # message is lost. Accept any here, so that the assertion names the cause instead.
            self.arities.add(len(args))
            record(args[0])

        peer.sio.on("message", on_message)
        self.sessions.append(peer)
        await peer.connect(self.room.url, self.room.tokens[self.name])

    async def drop(self) -> None:
        """Leave: what this session saw is final."""
        await self.peer.close()
        self.folded += self.live()

    async def reconnect_and_catch_up(self) -> None:
        """Connect first (live events start to queue), then page through everything after the last seen seq."""
        if self.peer.sio.connected or not self.peer.disconnected.is_set():
            await self.drop()
        else:  # the server closed it (a restart): what it saw before is final
            await self.peer.close()
            self.folded += self.live()
        last = max((seq for seq, _ in self.folded), default=0)
        await self.connect()
        async with httpx.AsyncClient(base_url=self.room.url, timeout=30) as http:
            while True:
                r = await http.get(
                    f"/api/chatrooms/{self.room.room_id}/messages",
                    params={"after_seq": last, "limit": PAGE},
                    headers=bearer(self.room.tokens[self.name]),
                )
                assert r.status_code == 200, r.text
                page = [(row["seq"], row["id"]) for row in r.json()]
                if not page:
                    break
                self.rest_pages += 1
                self.folded += page
                last = page[-1][0]

    def view(self) -> list[tuple[int, str]]:
        shown: dict[int, str] = {}
        for seq, message_id in [*self.folded, *self.live()]:
            assert shown.setdefault(seq, message_id) == message_id, f"seq {seq} came with two ids"
        return list(shown.items())

    def check_sessions(self) -> None:
        for number, peer in enumerate(self.sessions):
            seqs = [seq for seq, _ in self.live(peer)]
            assert seqs == sorted(set(seqs)), f"session {number}: live events duplicated or out of seq order"

    async def close(self) -> None:
        if self.sessions:
            await self.peer.close()


@pytest.fixture
async def readers() -> AsyncIterator[list[CatchUpReader]]:
    made: list[CatchUpReader] = []
    yield made
    for reader in made:
        await reader.close()


@pytest.mark.parametrize("away", AWAYS)
async def test_python_socketio_client_away_mid_bombing_catches_up_through_rest(
    running: RunningServer, readers: list[CatchUpReader], away: float
) -> None:
    await python_away_mid_bombing(running.url, readers, away)


async def python_away_mid_bombing(url: str, readers: list[CatchUpReader], away: float) -> None:
    room = await Room.create(url)
    reader = CatchUpReader(room)
    readers.append(reader)
    await reader.connect()
    bombing = Bombing(room, pace=pace_for(away))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bombing.run)
        await wait_until(lambda: len(reader.live()) >= SEEN_BEFORE_DROP)
        await reader.drop()
        sent_at_drop = bombing.sent
        await trio.sleep(away)  # away while the others bomb
        assert bombing.sent > sent_at_drop, "the bombing went on while the reader was away"
        await reader.reconnect_and_catch_up()
        await wait_until(lambda: len(reader.live()) >= SEEN_AFTER_RETURN)
        bombing.stop()
    await assert_python_reader_has_history(reader, room)
    assert reader.rest_pages > 1, "the catch-up really paged"


async def assert_python_reader_has_history(reader: CatchUpReader, room: Room) -> None:
    history = await room.history()
    assert [seq for seq, _ in history] == list(range(1, len(history) + 1)), "the room's seqs are gap-free"
    await wait_until(lambda: len(reader.view()) >= len(history))
    reader.check_sessions()
    assert reader.arities == {1}, "python-socketio sees no change on the wire: no offset argument on `message`"
    assert reader.view() == history, "every message exactly once, in seq order"


# -- the socket.io-client reader: the same Socket reconnects and recovers, no REST ------------------------


def assert_node_reader_has_history(node: NodeClient, history: list[tuple[int, str]], room: Room) -> None:
    """After the recovery check: the socket's whole stream is the history, once each, in order."""
    got = [(m["seq"], m["id"]) for m in node.messages if m["roomId"] == room.room_id]
    assert got == history, f"every message exactly once, in seq order ({len(got)} got, {len(history)} stored)"


def check_recovered(node: NodeClient) -> None:
    connects = node.connects
    assert len(connects) == 2, f"one connect and one reconnect of the same socket\n{node.describe()}"
    if not connects[1]["recovered"]:
        raise RecoveryMissing(f"socket.recovered is false after the reconnect (pid {connects[1]['pid']!r})")


async def wait_for_reconnect(node: NodeClient, *, within: float) -> None:
    try:
        await wait_until(lambda: len(node.connects) >= 2, within=within)
    except trio.TooSlowError:
        raise AssertionError(f"the socket did not reconnect\n{node.describe()}") from None


async def node_away_mid_bombing(
    url: str, nursery: trio.Nursery, away: float, *, seen_before: int = SEEN_BEFORE_DROP
) -> tuple[Room, NodeClient, list[tuple[int, str]]]:
    node_exe = node_or_skip()
    room = await Room.create(url)
    node = await NodeClient.start(nursery, node_exe, url, room.tokens["node"])
    await wait_until(lambda: len(node.connects) == 1)
    bombing = Bombing(room, pace=pace_for(away))
    async with trio.open_nursery() as bombers:
        bombers.start_soon(bombing.run)
        await wait_until(lambda: len(node.messages) >= seen_before)
        await node.drop(away)
        await wait_for_reconnect(node, within=away + 15)
        seen = len(node.messages)
        await wait_until(lambda: len(node.messages) >= seen + SEEN_AFTER_RETURN)
        bombing.stop()
    history = await room.history()
    await node.exit()
    return room, node, history


async def test_node_harness_connects_receives_and_reconnects_the_same_socket(
    running: RunningServer, nursery: trio.Nursery
) -> None:
    """The harness itself: if this fails, the recovery tests below prove nothing."""
    room, node, history = await node_away_mid_bombing(running.url, nursery, 1.0, seen_before=10)
    assert [e["reason"] for e in node.of("disconnect")] == ["forced close", "io client disconnect"], node.describe()
    assert node.of("reconnect_attempt"), "the Manager reconnected, not a new socket"
    assert [e["transport"] for e in node.of("open")] == ["polling", "polling"], (
        "polling first, as the frontend (contract §3.6)"
    )
    assert node.of("upgrade"), "then the websocket upgrade"
    assert {m["roomId"] for m in node.messages} == {room.room_id}
    got = [(m["seq"], m["id"]) for m in node.messages]
    assert set(got) <= set(history), "what it saw is stored, with the same ids"
    assert [s for s, _ in got] == sorted(set(s for s, _ in got)), "no duplicate, in seq order"


@pytest.mark.parametrize("away", AWAYS)
async def test_node_socketio_client_away_mid_bombing_recovers_every_message(
    running: RunningServer, nursery: trio.Nursery, away: float
) -> None:
    room, node, history = await node_away_mid_bombing(running.url, nursery, away)
    check_recovered(node)
    assert_node_reader_has_history(node, history, room)


async def test_node_socketio_client_that_saw_no_event_before_dropping_still_recovers(
    running: RunningServer, nursery: trio.Nursery
) -> None:
    """socket.io's own server needs an offset to recover, and a socket that got no event has none to send."""
    node_exe = node_or_skip()
    room = await Room.create(running.url)
    before = Bombing(room, pace=0.001, cap=10)  # history the socket must not be given: it predates it
    await before.run()
    k = len(await room.history())
    assert k == 10 * len(SENDERS)
    node = await NodeClient.start(nursery, node_exe, running.url, room.tokens["node"])
    await wait_until(lambda: len(node.connects) == 1)
    away = 2.0
    await node.drop(away)
    bombing = Bombing(room, pace=pace_for(away), first=1000)
    async with trio.open_nursery() as bombers:
        bombers.start_soon(bombing.run)
        await wait_for_reconnect(node, within=away + 15)
        await wait_until(lambda: len(node.messages) >= SEEN_AFTER_RETURN)
        bombing.stop()
    history = await room.history()
    await node.exit()
    before_drop = node.events[: node.events.index({"ev": "dropping", "away_ms": 2000})]
    assert not [e for e in before_drop if e["ev"] == "message"], "it had received no event when it dropped"
    check_recovered(node)
    assert_node_reader_has_history(node, history[k:], room)


# -- across a server restart -------------------------------------------------------------------------------


def free_port() -> int:
    """A port to restart on (the server sets SO_REUSEADDR, so its own TIME_WAITs do not block the restart)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Restart:
    """``python -m server`` on a fixed port and database, bombed, stopped with SIGTERM and started again."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self.nursery = nursery
        self.port = free_port()
        self.args = ["--database", f"sqlite:///{tmp_path / 'r.db'}", "--bcrypt-rounds", "4"]
        self.args += ["--bcrypt-batch-rounds", "4", "--port", str(self.port)]  # the last --port wins

    async def start(self) -> str:
        server = await start_server_process(self.nursery, self.args)
        self.server = server
        return server.url

    async def bomb_then_stop_server(self, room: Room, seen: Any) -> None:
        """Bomb until ``seen()`` is true, then SIGTERM the server under the bombing."""
        bombing = Bombing(room, pace=0.01)
        async with trio.open_nursery() as bombers:
            bombers.start_soon(bombing.run)
            await wait_until(seen)
            assert await self.server.terminate() == 0
        assert b"all accepted messages committed" in self.server.log


async def test_python_socketio_client_catches_up_across_a_server_restart(
    nursery: trio.Nursery, tmp_path: Path, readers: list[CatchUpReader]
) -> None:
    restart = Restart(nursery, tmp_path)
    room = await Room.create(await restart.start())
    reader = CatchUpReader(room)
    readers.append(reader)
    await reader.connect()
    await restart.bomb_then_stop_server(room, lambda: len(reader.live()) >= SEEN_BEFORE_DROP)
    await wait_until(reader.peer.disconnected.is_set)
    assert await restart.start() == room.url, "the same URL after the restart"
    bombing = Bombing(room, pace=0.01, first=100_000)
    async with trio.open_nursery() as bombers:
        bombers.start_soon(bombing.run)
        await wait_until(lambda: bombing.answered >= MISSED_AFTER_RESTART)  # sent after the restart, before it is back
        await reader.reconnect_and_catch_up()
        await wait_until(lambda: len(reader.live()) >= SEEN_AFTER_RETURN)
        bombing.stop()
    await assert_python_reader_has_history(reader, room)
    assert reader.rest_pages >= 1, "it caught up what the restarted server stored before it was back"
    assert await restart.server.terminate() == 0


async def test_node_socketio_client_recovers_across_a_server_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    node_exe = node_or_skip()
    restart = Restart(nursery, tmp_path)
    room = await Room.create(await restart.start())
    node = await NodeClient.start(nursery, node_exe, room.url, room.tokens["node"])
    await wait_until(lambda: len(node.connects) == 1)
    await restart.bomb_then_stop_server(room, lambda: len(node.messages) >= SEEN_BEFORE_DROP)
    await restart.start()
    bombing = Bombing(room, pace=0.01, first=100_000)  # at once: the socket misses what comes before it is back
    async with trio.open_nursery() as bombers:
        bombers.start_soon(bombing.run)
        # The frontend's own backoff brings it back: 1 s ± 50 %, then 2 s, 4 s, 5 s, ... after the server left.
        await wait_for_reconnect(node, within=30)
        seen = len(node.messages)
        await wait_until(lambda: len(node.messages) >= seen + SEEN_AFTER_RETURN)
        bombing.stop()
    history = await room.history()
    await node.exit()
    assert await restart.server.terminate() == 0
    assert node.of("disconnect")[0]["reason"] == "transport close", node.describe()
    check_recovered(node)
    assert_node_reader_has_history(node, history, room)


# -- the harness against socket.io's own recovery ----------------------------------------------------------


async def test_harness_sees_socketio_reference_server_recover_every_message(nursery: trio.Nursery) -> None:
    """On a server that recovers (socket.io 4.8.1's own) the same checks pass: they test recovery, not quirks."""
    node_exe = node_or_skip()
    reference = await ReferenceServer.start(nursery, node_exe)
    node = await NodeClient.start(nursery, node_exe, reference.url, "any")
    await wait_until(lambda: len(node.connects) == 1)
    await reference.bomb(count=1500, every=0.002)  # ~3 s of bombing at most, well past the 1 s away
    await wait_until(lambda: len(node.messages) >= SEEN_BEFORE_DROP)
    await node.drop(1.0)
    await wait_for_reconnect(node, within=15)
    await wait_until(lambda: bool(reference.of("done")))
    total = reference.of("done")[0]["seq"]
    await wait_until(lambda: len(node.messages) >= total)
    await node.exit()
    check_recovered(node)
    assert node.connects[0]["pid"] == node.connects[1]["pid"] is not None, "the same pid on the reconnect"
    assert [m["seq"] for m in node.messages] == list(range(1, total + 1)), "exactly once, in order"
    assert all(m["nargs"] == 2 and m["offset"] for m in node.messages), "each event carried its offset"


async def test_harness_tells_socketio_reference_server_does_not_recover_a_socket_that_saw_nothing(
    nursery: trio.Nursery,
) -> None:
    """socket.io restores a session only from ``{pid, offset}``; a socket that got no event sends no offset."""
    node_exe = node_or_skip()
    reference = await ReferenceServer.start(nursery, node_exe)
    node = await NodeClient.start(nursery, node_exe, reference.url, "any")
    await wait_until(lambda: len(node.connects) == 1)
    await node.drop(1.0)
    await reference.bomb(count=100, every=0.002)  # while it is away
    await wait_for_reconnect(node, within=15)
    await node.exit()
    assert node.connects[1]["pid"] is not None, "the reference does give a pid"
    with pytest.raises(RecoveryMissing):
        check_recovered(node)

"""Delivery: live pushes at the head, catch-up from the log behind it, and the switch between them.

Real :class:`Session` objects (polling transport: their queue is the outbox, ``poll()`` is the reader) and a
real SQLite engine. Real time, not the autojump clock: the log's reads run on a thread, and a virtual clock
jumps ahead while a thread works, so hang guards would fire early.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from protocol.events import MessageOut, message_packet
from server.delivery import Delivery
from server.session import Session
from storage.errors import StorageUnavailableError
from storage.records import HistoryQuery, NewMessage, RoomRecord, StoredMessage
from storage.sqlite.engine import SqliteEngine

ROOM = "room-1"
OTHER = "room-2"
BIG = "x" * 1000  # ~1 KB a message: a 16 KiB high-water mark holds about 15


class Log:
    """A room log in a real SQLite file, and the head that delivery asks for."""

    def __init__(self, engine: SqliteEngine) -> None:
        self.engine = engine
        self.heads: dict[str, int] = {ROOM: 0, OTHER: 0}

    def head(self, room_id: str) -> int:
        return self.heads.get(room_id, 0)

    async def commit(self, room_id: str, count: int) -> list[bytes]:
        """Store ``count`` messages; returns their packets (what a live push sends)."""
        batch = [
            NewMessage(f"{room_id}-{self.heads[room_id] + i}", room_id, "alice", BIG, "t", 0) for i in range(count)
        ]
        results = await self.engine.append_messages(batch)
        packets = []
        for result in results:
            stored = result.message
            assert stored is not None
            out = MessageOut("message", room_id, stored.sender, stored.content, stored.timestamp, stored.id, stored.seq)
            packets.append(message_packet(out))
            self.heads[room_id] = stored.seq
        return packets


@pytest.fixture
async def log(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Log]:
    engine = SqliteEngine(str(tmp_path / "d.db"))
    await nursery.start(engine.run)
    now = "2026-01-01T00:00:00.000Z"
    await engine.insert_rooms([RoomRecord(r, r, ("alice",), "alice", now, now) for r in (ROOM, OTHER)])
    yield Log(engine)


def session(name: str) -> Session:
    def overflow(s: Session, why: str) -> None:
        raise AssertionError(f"{s.sid} cut off: {why}")

    return Session(
        name,
        None,
        now=0.0,
        ping_interval=25,
        connect_timeout=45,
        max_queue_bytes=10 << 20,
        max_queue_packets=100_000,
        on_overflow=overflow,
    )


async def read_all(s: Session) -> list[tuple[str, int]]:
    """Everything queued for the session right now, as (room, seq)."""
    got = []
    while s.pending_bytes:
        for packet in (await s.poll()).split(b"\x1e"):
            name, data = json.loads(packet[2:])
            assert name == "message"
            got.append((data["roomId"], data["seq"]))
    return got


async def settle(delivery: Delivery, s: Session) -> list[tuple[str, int]]:
    """Read until the session is live again; returns everything it got on the way."""
    got: list[tuple[str, int]] = []
    with trio.fail_after(30):  # a hang guard, not a speed claim
        while s.lagging or s.pending_bytes:
            got += await read_all(s)
            await trio.sleep(0.05)  # let the catch-up task run
    return got


async def test_members_at_the_head_get_pushes_and_a_slow_one_catches_up_without_gap_or_repeat(
    nursery: trio.Nursery, log: Log
) -> None:
    delivery = Delivery(log.engine, log.head, high_water=16 * 1024, page=7)
    await nursery.start(delivery.run)
    fast, slow = session("fast"), session("slow")
    delivery.subscribe(fast, ROOM)
    delivery.subscribe(slow, ROOM)
    fast_got: list[tuple[str, int]] = []
    for _ in range(20):  # 20 batches of 5: 100 KB, far past the slow member's 16 KiB
        packets = await log.commit(ROOM, 5)
        delivery.publish(ROOM, packets, log.heads[ROOM] - 4)
        fast_got += await read_all(fast)  # the fast member reads every batch; the slow one reads nothing
        assert slow.pending_bytes <= 16 * 1024 + 7 * 1100, "at most the high-water mark plus a page"
    assert fast_got == [(ROOM, n) for n in range(1, 101)]
    assert slow.lagging and not fast.lagging
    assert delivery.backlog() == 100 - slow.cursors[ROOM] > 0, "the slow member's unread messages"
    got = await settle(delivery, slow)
    assert got == [(ROOM, n) for n in range(1, 101)], "every message once, in seq order"
    assert delivery.backlog() == 0
    assert delivery.messages_caught_up > 0
    # Live again: the next batch is pushed to it directly, continuing its cursor.
    packets = await log.commit(ROOM, 1)
    assert delivery.publish(ROOM, packets, 101) == 2
    assert await read_all(slow) == [(ROOM, 101)]


async def test_catch_up_covers_every_room_before_rejoining(nursery: trio.Nursery, log: Log) -> None:
    delivery = Delivery(log.engine, log.head, high_water=8 * 1024, page=50)
    await nursery.start(delivery.run)
    slow = session("slow")
    delivery.subscribe(slow, ROOM)
    delivery.subscribe(slow, OTHER)
    for room in (ROOM, OTHER, ROOM, OTHER):
        packets = await log.commit(room, 10)
        delivery.publish(room, packets, log.heads[room] - 9)
    got = await settle(delivery, slow)
    assert sorted(seq for room, seq in got if room == ROOM) == [seq for room, seq in got if room == ROOM]
    assert [seq for room, seq in got if room == ROOM] == list(range(1, 21))
    assert [seq for room, seq in got if room == OTHER] == list(range(1, 21))


async def test_a_gap_in_a_push_switches_to_catch_up_rather_than_skipping(nursery: trio.Nursery, log: Log) -> None:
    delivery = Delivery(log.engine, log.head, high_water=1 << 20, page=50)
    await nursery.start(delivery.run)
    member = session("m")
    delivery.subscribe(member, ROOM)
    first = await log.commit(ROOM, 3)  # never published: as if a batch had gone missing
    second = await log.commit(ROOM, 2)
    assert delivery.publish(ROOM, second, 4) == 0
    assert member.lagging
    assert await settle(delivery, member) == [(ROOM, n) for n in range(1, 6)]
    assert first  # stored, and delivered from the log


async def test_nothing_stored_past_the_cursor_does_not_hold_a_member_back(nursery: trio.Nursery, log: Log) -> None:
    """delete-all removes messages but keeps seqs: a lagging member moves to the head and goes live."""
    delivery = Delivery(log.engine, log.head, high_water=1 << 20, page=50)
    await nursery.start(delivery.run)
    member = session("m")
    delivery.subscribe(member, ROOM)
    await log.commit(ROOM, 3)
    await log.engine.delete_all_messages()
    packets = await log.commit(ROOM, 1)
    delivery.publish(ROOM, packets, 4)  # cursor 0, push starts at 4: a gap
    assert await settle(delivery, member) == [(ROOM, 4)]


async def test_fast_mode_rejoins_through_the_uncommitted_tail(nursery: trio.Nursery, log: Log) -> None:
    """Stored messages come from the log, broadcast-but-unstored ones from the tail: each once, in order."""
    delivery = Delivery(log.engine, log.head, high_water=4 * 1024, page=50)
    await nursery.start(delivery.run)
    slow = session("slow")
    delivery.subscribe(slow, ROOM)
    for seq in range(1, 11):  # broadcast before commit, as fast mode does
        out = MessageOut("message", ROOM, "alice", BIG, "t", f"id-{seq}", seq)
        packet = message_packet(out)
        log.heads[ROOM] = seq
        delivery.hold(ROOM, seq, packet)
        delivery.publish(ROOM, [packet], seq)
    assert slow.lagging
    # The first 6 get committed (with the same seqs); 7-10 are still only in the tail.
    log.heads[ROOM] = 0
    await log.commit(ROOM, 6)
    log.heads[ROOM] = 10
    delivery.stored(ROOM, 6)
    got = await settle(delivery, slow)
    assert got == [(ROOM, n) for n in range(1, 11)]


class FlakyReads:
    """The log, whose first history read fails as a locked database would."""

    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine
        self.failures = 0

    async def history(self, query: HistoryQuery) -> list[StoredMessage]:
        if self.failures == 0:
            self.failures += 1
            raise StorageUnavailableError("storage unavailable: database is locked")
        return await self._engine.history(query)


async def test_a_failing_log_read_is_retried_and_costs_nothing(nursery: trio.Nursery, log: Log) -> None:
    reads = FlakyReads(log.engine)
    delivery = Delivery(reads, log.head, high_water=1 << 20, page=50)  # type: ignore[arg-type]  # reads only
    await nursery.start(delivery.run)
    member = session("m")
    delivery.subscribe(member, ROOM)
    await log.commit(ROOM, 3)
    packets = await log.commit(ROOM, 1)
    delivery.publish(ROOM, packets, 4)  # a gap: catch-up must read the log, and the first read fails
    assert await settle(delivery, member) == [(ROOM, n) for n in range(1, 5)]
    assert reads.failures == 1


async def test_a_member_that_disconnects_while_lagging_gets_pushes_after_it_connects_again(
    nursery: trio.Nursery, log: Log
) -> None:
    delivery = Delivery(log.engine, log.head, high_water=1 << 20, page=50)
    await nursery.start(delivery.run)
    member = session("m")
    delivery.subscribe(member, ROOM)
    packets = await log.commit(ROOM, 2)
    delivery.publish(ROOM, packets[1:], 2)  # a gap: lagging
    assert member.lagging
    delivery.unsubscribe_all(member)  # Socket.IO DISCONNECT on the same Engine.IO session
    delivery.subscribe(member, ROOM)  # and CONNECT again: at the head
    packets = await log.commit(ROOM, 1)
    assert delivery.publish(ROOM, packets, 3) == 1
    assert await read_all(member) == [(ROOM, 3)]


class CommitsDuringRead:
    """The log, where a batch commits while the first (empty) catch-up read is in flight."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.reads = 0

    async def history(self, query: HistoryQuery) -> list[StoredMessage]:
        rows = await self._log.engine.history(query)
        self.reads += 1
        if self.reads == 1:
            await self._log.commit(ROOM, 3)  # committed after the read saw the log, before it returned
        return rows


async def test_catch_up_does_not_skip_what_commits_while_it_reads(nursery: trio.Nursery, log: Log) -> None:
    reads = CommitsDuringRead(log)
    delivery = Delivery(reads, log.head, high_water=1 << 20, page=50)  # type: ignore[arg-type]  # reads only
    await nursery.start(delivery.run)
    member = session("m")
    delivery.subscribe(member, ROOM)
    await log.commit(ROOM, 5)
    await log.engine.delete_all_messages()  # seqs 1-5 are gone from the log, the head stays at 5
    delivery.catch_up_if_behind(member)  # cursor 0, head 5, nothing stored: the first read is empty
    assert await settle(delivery, member) == [(ROOM, n) for n in range(6, 9)]

"""The storage engine contract (``storage/engine.py``) as one suite, run against every engine.

Each test gets ``engine``: a running engine, opened with ``open_storage`` from a URL, on a database of its own
(SQLite: a file in ``tmp_path``; PostgreSQL: a fresh database on the session's throwaway cluster). The
assertions are the same for every engine; the few places where engines may legitimately differ say why.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import open_storage
from storage.engine import StorageEngine
from storage.errors import StorageClosedError, StorageError
from storage.records import Appended, HistoryQuery, NewMessage, RoomRecord, StoredMessage, UserRecord
from storage.timefmt import iso_utc

NOW = "2026-01-01T00:00:00.000Z"
LATER = "2026-01-02T00:00:00.000Z"
T0 = 1_767_225_600_000  # NOW in milliseconds
ALL = 10_000  # a page size larger than any room here

# Message ids are unique in a whole database (and across a test's hypothesis examples, which share one).
_ids = itertools.count(1)


def room(room_id: str, *members: str) -> RoomRecord:
    participants = members or ("alice",)
    return RoomRecord(room_id, f"room {room_id}", participants, participants[0], NOW, NOW)


def user(name: str) -> UserRecord:
    return UserRecord(f"user-{next(_ids)}", name, "$2b$04$" + "x" * 53, NOW, NOW)


def msg(
    room_id: str,
    *,
    sender: str = "alice",
    cmid: str | None = None,
    seq: int | None = None,
    ts_ms: int = T0,
    content: str | None = None,
) -> NewMessage:
    n = next(_ids)
    return NewMessage(
        f"msg-{n}", room_id, sender, content or f"hello {n}", iso_utc(ts_ms / 1000), ts_ms, client_msg_id=cmid, seq=seq
    )


def stored(results: Sequence[Appended]) -> list[StoredMessage]:
    """The rows of a batch whose every message was newly stored."""
    rows = []
    for r in results:
        assert r.message is not None and not r.duplicate, r
        rows.append(r.message)
    return rows


async def everything(engine: StorageEngine, room_id: str) -> list[StoredMessage]:
    return await engine.history(HistoryQuery(room_id, ALL, after_seq=0))


async def last_seqs(engine: StorageEngine) -> dict[str, int]:
    return {r.room_id: r.last_seq for r in await engine.load_rooms()}


class Engines:
    """Engines on the test's database, run in the test's nursery: started, stopped, and opened again."""

    def __init__(self, url: str, nursery: trio.Nursery) -> None:
        self.url = url
        self._nursery = nursery
        self._running: dict[int, tuple[trio.CancelScope, trio.Event]] = {}

    async def start(self) -> StorageEngine:
        engine = open_storage(self.url)
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await engine.run(task_status=task_status)
            finally:
                stopped.set()

        await self._nursery.start(serve)
        self._running[id(engine)] = (scope, stopped)
        return engine

    async def stop(self, engine: StorageEngine) -> None:
        """Stop as the server does: cancel ``run``, which finishes the accepted work and closes."""
        scope, stopped = self._running.pop(id(engine))
        scope.cancel()
        await stopped.wait()

    async def restart(self, engine: StorageEngine) -> StorageEngine:
        await self.stop(engine)
        return await self.start()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    url: str = request.getfixturevalue("pg_url")  # skipped (or failed under CI) without PostgreSQL
    return url


@pytest.fixture
async def engines(database_url: str, nursery: trio.Nursery) -> Engines:
    return Engines(database_url, nursery)


@pytest.fixture
async def engine(engines: Engines) -> StorageEngine:
    return await engines.start()


# -- users -----------------------------------------------------------------------------------------------
async def test_users_insert_flags_lookup_and_delete_all(engine: StorageEngine) -> None:
    alice, big_alice, alice_again, bob = user("alice"), user("Alice"), user("alice"), user("bob")
    # Usernames are exact and case-sensitive; a repeat within one batch is refused like a repeat of a stored one.
    assert await engine.insert_users([alice, big_alice, alice_again, bob]) == [True, True, False, True]
    carol = user("carol")
    assert await engine.insert_users([user("bob"), carol]) == [False, True]
    assert await engine.insert_users([]) == []
    found = await engine.get_users(["alice", "Alice", "ALICE", "nobody", "alice"])
    assert found == {"alice": alice, "Alice": big_alice}  # the first alice, not the refused one
    assert await engine.get_users([]) == {}
    assert await engine.delete_all_users() == 4
    assert await engine.get_users(["alice", "Alice", "bob", "carol"]) == {}
    assert await engine.delete_all_users() == 0
    assert await engine.insert_users([user("alice")]) == [True]  # the name is free again


# -- rooms -----------------------------------------------------------------------------------------------
async def test_rooms_keep_creation_order_and_participant_order(engine: StorageEngine) -> None:
    # Ids chosen so that neither alphabetical nor reverse order is creation order.
    first, second, third = room("r-b", "zed", "alice", "mia"), room("r-c", "carol"), room("r-a", "bob", "ann")
    await engine.insert_rooms([first, second])
    await engine.insert_rooms([third])
    await engine.insert_rooms([])
    assert await engine.load_rooms() == [first, second, third]

    await engine.set_participants("r-b", ["mia", "zed", "alice", "dave"], LATER)
    changed = RoomRecord("r-b", "room r-b", ("mia", "zed", "alice", "dave"), "zed", NOW, LATER)
    assert await engine.load_rooms() == [changed, second, third]
    await engine.set_participants("r-a", (), LATER)  # an emptied room keeps its place
    assert [(r.room_id, r.participants) for r in await engine.load_rooms()] == [
        ("r-b", ("mia", "zed", "alice", "dave")),
        ("r-c", ("carol",)),
        ("r-a", ()),
    ]


async def test_load_rooms_reports_each_rooms_last_seq(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2"), room("r3")])
    await engine.append_messages([msg("r1"), msg("r2"), msg("r1")])
    await engine.append_messages([msg("r1")])
    assert await last_seqs(engine) == {"r1": 3, "r2": 1, "r3": 0}


async def test_delete_room_removes_the_room_and_its_messages(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2"), room("r3")])
    await engine.append_messages([msg("r1"), msg("r2"), msg("r1", cmid="c-1")])
    await engine.delete_room("r1")
    assert [r.room_id for r in await engine.load_rooms()] == ["r2", "r3"]
    assert await everything(engine, "r1") == []
    assert [m.seq for m in await everything(engine, "r2")] == [1]
    assert await engine.cursors_at(["r1", "r2"], await engine.log_head()) == {"r1": 0, "r2": 1}
    assert await engine.recent_idempotent_sends(10) == []
    await engine.delete_room("r1")  # gone already: nothing happens
    await engine.delete_room("never-was")


async def test_a_message_for_a_deleted_or_unknown_room_comes_back_empty(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    await engine.append_messages([msg("r1")])
    await engine.delete_room("r1")
    results = await engine.append_messages([msg("r1"), msg("r2"), msg("unknown", cmid="c-1"), msg("r2")])
    assert [(r.message, r.duplicate) for r in results[::2]] == [(None, False), (None, False)]
    assert [m.seq for m in stored(results[1::2])] == [1, 2]
    assert await everything(engine, "r1") == []
    assert await everything(engine, "unknown") == []
    assert await last_seqs(engine) == {"r2": 2}


# -- append_messages: seq and pk -------------------------------------------------------------------------
async def test_seq_is_the_rooms_last_plus_one_in_batch_order_across_interleaved_rooms(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2"), room("r3")])
    assert await engine.append_messages([]) == []
    first = stored(await engine.append_messages([msg("r1"), msg("r2"), msg("r1"), msg("r3"), msg("r1"), msg("r2")]))
    assert [(m.room_id, m.seq) for m in first] == [("r1", 1), ("r2", 1), ("r1", 2), ("r3", 1), ("r1", 3), ("r2", 2)]
    second = stored(await engine.append_messages([msg("r2"), msg("r1"), msg("r2")]))
    assert [(m.room_id, m.seq) for m in second] == [("r2", 3), ("r1", 4), ("r2", 4)]
    for room_id in ("r1", "r2", "r3"):
        rows = [m for m in first + second if m.room_id == room_id]
        assert await everything(engine, room_id) == rows  # exactly what append returned, in seq order


async def test_pk_rises_in_commit_order_and_is_never_reused(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2"), room("r3")])
    assert await engine.log_head() == 0
    rows = stored(await engine.append_messages([msg("r1"), msg("r2"), msg("r1")]))
    rows += stored(await engine.append_messages([msg("r3"), msg("r1"), msg("r2")]))
    pks = [m.pk for m in rows]
    assert pks == sorted(set(pks)) and pks[0] >= 1, pks  # strictly rising across rooms and batches
    assert await engine.log_head() == pks[-1]

    await engine.delete_room("r2")  # holds the highest pk
    assert await engine.log_head() == pks[-1]  # the head never goes back
    [after_delete_room] = stored(await engine.append_messages([msg("r1")]))
    assert after_delete_room.pk > pks[-1]

    assert await engine.delete_all_messages() == (5, 2)
    assert await engine.log_head() == after_delete_room.pk
    [after_delete_all] = stored(await engine.append_messages([msg("r3")]))
    assert after_delete_all.pk > after_delete_room.pk
    assert after_delete_all.seq == 2  # r3's counter survived the delete too
    assert await engine.log_head() == after_delete_all.pk


async def test_log_head_is_the_highest_pk_a_message_was_given(engine: StorageEngine) -> None:
    """A batch that stores nothing (only repeats, a retry, a deleted room's message) gives no message a pk, so
    the head stays where it is: it is "the highest pk any message was ever given" (storage/engine.py)."""
    await engine.insert_rooms([room("r1"), room("r2")])
    batch = [msg("r1", cmid="c-1"), msg("r2")]
    rows = stored(await engine.append_messages(batch))
    head = await engine.log_head()
    assert head == rows[-1].pk
    await engine.delete_room("r2")
    results = await engine.append_messages([msg("r1", cmid="c-1"), *batch, msg("r2")])
    assert [r.duplicate for r in results] == [True, False, False, False]
    assert await engine.log_head() == head
    [new] = stored(await engine.append_messages([msg("r1")]))
    assert await engine.log_head() == new.pk


# -- append_messages: idempotency and retries ------------------------------------------------------------
async def test_a_repeat_in_the_same_or_a_later_batch_is_the_stored_row(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1", "alice", "bob")])
    original, repeat, other = await engine.append_messages(
        [msg("r1", cmid="c-1"), msg("r1", cmid="c-1", content="typed again"), msg("r1", cmid="c-2")]
    )
    assert original.message is not None and not original.duplicate and original.message.seq == 1
    assert repeat == Appended(original.message, duplicate=True)
    assert other.message is not None and not other.duplicate and other.message.seq == 2

    later, fresh = await engine.append_messages([msg("r1", cmid="c-1", content="once more"), msg("r1")])
    assert later == Appended(original.message, duplicate=True)
    assert fresh.message is not None and fresh.message.seq == 3
    assert await everything(engine, "r1") == [original.message, other.message, fresh.message]
    assert await last_seqs(engine) == {"r1": 3}


async def test_the_same_client_msg_id_from_another_sender_or_room_is_a_new_message(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1", "alice", "bob"), room("r2", "alice", "bob")])
    results = await engine.append_messages(
        [
            msg("r1", sender="alice", cmid="c-1"),
            msg("r1", sender="bob", cmid="c-1"),
            msg("r2", sender="alice", cmid="c-1"),
            msg("r1", sender="alice", cmid="C-1"),  # ids are exact
        ]
    )
    assert [(m.room_id, m.sender, m.seq) for m in stored(results)] == [
        ("r1", "alice", 1),
        ("r1", "bob", 2),
        ("r2", "alice", 1),
        ("r1", "alice", 3),
    ]
    later = await engine.append_messages([msg("r2", sender="bob", cmid="c-1")])
    assert [(m.room_id, m.seq) for m in stored(later)] == [("r2", 2)]


async def test_a_retried_batch_returns_the_stored_rows_and_stores_nothing_twice(engine: StorageEngine) -> None:
    """The batch's commit reached the database but its answer was lost: the batcher sends it again as it is."""
    await engine.insert_rooms([room("r1", "alice", "bob"), room("r2")])
    batch = [
        msg("r1"),
        msg("r2", cmid="c-1"),
        msg("r1", sender="bob", cmid="c-1"),
        msg("r1", sender="bob", cmid="c-1"),  # a repeat within the batch: its id was never stored
    ]
    first = await engine.append_messages(batch)
    assert [r.duplicate for r in first] == [False, False, False, True]
    head = await engine.log_head()
    rooms_before = await engine.load_rooms()

    again = await engine.append_messages(batch)
    # The stored rows as they are, not duplicates (they were never answered); the in-batch repeat is one still.
    assert again == first
    assert await engine.load_rooms() == rooms_before
    assert len(await everything(engine, "r1")) == 2 and len(await everything(engine, "r2")) == 1

    with_more = await engine.append_messages([*batch, msg("r1")])
    assert with_more[:-1] == first
    [new] = stored(with_more[-1:])
    assert (new.seq, new.pk > head) == (3, True)


async def test_a_failed_batch_stores_nothing_and_may_be_sent_again(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    [before] = stored(await engine.append_messages([msg("r1")]))
    clash = msg("r1")
    # The same message id twice is a caller's bug: its error is the engine's own (SQLite's IntegrityError passes
    # through as a bug, see storage/sqlite/engine.py; PostgreSQL's engine notices the conflict and raises a
    # StorageError). Either way the whole transaction rolls back.
    with pytest.raises((sqlite3.IntegrityError, StorageError)):
        await engine.append_messages([msg("r2", cmid="c-1"), clash, msg("r1"), clash])
    assert await everything(engine, "r1") == [before]
    assert await everything(engine, "r2") == []
    assert await last_seqs(engine) == {"r1": 1, "r2": 0}
    assert await engine.log_head() == before.pk

    retry = stored(await engine.append_messages([msg("r2", cmid="c-1"), clash, msg("r1")]))
    assert [(m.room_id, m.seq) for m in retry] == [("r2", 1), ("r1", 2), ("r1", 3)]  # the same seqs handed out again
    assert [m.pk for m in retry] == sorted({m.pk for m in retry}) and retry[0].pk > before.pk


# -- append_messages: fast mode (the hub gave the seq) ---------------------------------------------------
async def test_a_fast_mode_seq_is_stored_as_given_and_moves_the_counter(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    durable = stored(await engine.append_messages([msg("r1"), msg("r1")]))
    fast = stored(await engine.append_messages([msg("r1", seq=3), msg("r2", seq=1), msg("r1", seq=4)]))
    assert [(m.room_id, m.seq) for m in fast] == [("r1", 3), ("r2", 1), ("r1", 4)]
    [next_durable] = stored(await engine.append_messages([msg("r1")]))
    assert next_durable.seq == 5
    # A seq ahead of the counter (seqs skipped after a crash in fast mode): stored as given, the counter follows.
    [ahead] = stored(await engine.append_messages([msg("r1", seq=9)]))
    assert ahead.seq == 9
    assert await last_seqs(engine) == {"r1": 9, "r2": 1}
    [after] = stored(await engine.append_messages([msg("r1")]))
    assert after.seq == 10
    assert [m.seq for m in await everything(engine, "r1")] == [1, 2, 3, 4, 5, 9, 10]
    assert await everything(engine, "r1") == [*durable, fast[0], fast[2], next_durable, ahead, after]


async def test_a_fast_mode_repeat_moves_the_counter_past_its_own_seq(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1")])
    [original] = stored(await engine.append_messages([msg("r1", cmid="c-1", seq=1)]))
    # Broadcast under seq 2 before storage could say it repeats c-1: seq 2 stays unused, never given again.
    [repeat] = await engine.append_messages([msg("r1", cmid="c-1", seq=2)])
    assert repeat == Appended(original, duplicate=True)
    assert await last_seqs(engine) == {"r1": 2}
    [nxt] = stored(await engine.append_messages([msg("r1")]))
    assert nxt.seq == 3
    # A repeat whose seq is behind the counter leaves the counter alone (it never goes back).
    [old_repeat] = await engine.append_messages([msg("r1", cmid="c-1", seq=2)])
    assert old_repeat == Appended(original, duplicate=True)
    assert await last_seqs(engine) == {"r1": 3}
    assert [m.seq for m in await everything(engine, "r1")] == [1, 3]


# -- reads -----------------------------------------------------------------------------------------------
async def test_history_pages_are_always_ascending(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    # r1's seq n was received at T0 + n seconds; r2 is noise in between.
    rows: list[StoredMessage] = []
    for n in range(1, 11):
        results = await engine.append_messages([msg("r1", ts_ms=T0 + n * 1000), msg("r2", ts_ms=T0 + n * 1000)])
        rows.append(stored(results)[0])

    async def page(**query: int) -> list[int]:
        limit = query.pop("limit", ALL)
        result = await engine.history(HistoryQuery("r1", limit, **query))
        assert result == [rows[m.seq - 1] for m in result]  # the rows as they were stored
        return [m.seq for m in result]

    assert await page() == list(range(1, 11))
    assert await page(limit=3) == [8, 9, 10]  # the newest page
    assert await page(before_seq=5, limit=3) == [2, 3, 4]
    assert await page(before_seq=3, limit=10) == [1, 2]
    assert await page(before_seq=1) == []
    assert await page(after_seq=4, limit=3) == [5, 6, 7]  # forward paging: the oldest after the cursor
    assert await page(after_seq=8, limit=10) == [9, 10]
    assert await page(after_seq=10) == []
    assert await page(after_seq=0, limit=2) == [1, 2]
    assert await page(after_seq=2, before_seq=8, limit=3) == [3, 4, 5]
    assert await page(after_seq=2, before_seq=8) == [3, 4, 5, 6, 7]
    assert await page(since_ms=T0 + 7000) == [8, 9, 10]  # strictly later
    assert await page(since_ms=T0 + 7000, limit=2) == [9, 10]
    assert await page(since_ms=T0 + 3000, after_seq=2, limit=2) == [4, 5]
    assert await page(since_ms=T0 + 3000, before_seq=7, limit=10) == [4, 5, 6]
    assert await page(since_ms=T0 + 10_000) == []
    assert await engine.history(HistoryQuery("unknown", 10)) == []


async def test_cursors_at_each_pk_of_the_log(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2"), room("r3")])
    rows = stored(await engine.append_messages([msg("r1"), msg("r2"), msg("r1")]))
    rows += stored(await engine.append_messages([msg("r2"), msg("r1")]))
    rooms = ["r1", "r2", "r3", "unknown"]
    for at in [0, *(m.pk for m in rows), rows[-1].pk + 100]:
        expected = {r: max((m.seq for m in rows if m.room_id == r and m.pk <= at), default=0) for r in rooms}
        assert await engine.cursors_at(rooms, at) == expected, at
    assert await engine.cursors_at(["r2"], rows[1].pk) == {"r2": 1}
    assert await engine.cursors_at([], rows[-1].pk) == {}


async def test_recent_idempotent_sends_are_the_newest_with_a_client_msg_id_oldest_first(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1", "alice", "bob"), room("r2")])
    assert await engine.recent_idempotent_sends(5) == []
    results = await engine.append_messages(
        [msg("r1", cmid="a"), msg("r2"), msg("r2", cmid="b"), msg("r1", sender="bob", cmid="c")]
    )
    results += await engine.append_messages([msg("r1"), msg("r1", cmid="a"), msg("r2", cmid="d"), msg("r1")])
    with_ids = [r.message for r in results if r.message is not None and not r.duplicate and r.message.client_msg_id]
    assert [m.client_msg_id for m in with_ids] == ["a", "b", "c", "d"]
    assert await engine.recent_idempotent_sends(3) == with_ids[1:]
    assert await engine.recent_idempotent_sends(100) == with_ids
    assert await engine.recent_idempotent_sends(0) == []


# -- the fast-run marker ---------------------------------------------------------------------------------
async def test_a_fast_run_not_ended_skips_every_rooms_seq_at_the_next_open(
    engines: Engines, engine: StorageEngine
) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    await engine.append_messages([msg("r1"), msg("r1"), msg("r1")])
    await engine.begin_fast_run(50)
    await engine.append_messages([msg("r1", seq=4), msg("r2", seq=1)])  # stored; others might not have been
    engine = await engines.restart(engine)  # stopped without end_fast_run: as after a crash

    assert await last_seqs(engine) == {"r1": 54, "r2": 51}
    rows = stored(await engine.append_messages([msg("r1"), msg("r2")]))
    assert [m.seq for m in rows] == [55, 52]  # old last + gap + 1
    # The skip was taken once: the marker is gone, so the next open skips nothing.
    engine = await engines.restart(engine)
    assert [m.seq for m in stored(await engine.append_messages([msg("r1")]))] == [56]


async def test_a_fast_run_ended_skips_nothing(engines: Engines, engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    await engine.append_messages([msg("r1"), msg("r1")])
    await engine.begin_fast_run(50)
    await engine.append_messages([msg("r1", seq=3)])
    await engine.end_fast_run()
    engine = await engines.restart(engine)
    assert await last_seqs(engine) == {"r1": 3, "r2": 0}
    assert [m.seq for m in stored(await engine.append_messages([msg("r1"), msg("r2")]))] == [4, 1]


# -- restart and delete-all ------------------------------------------------------------------------------
async def test_a_restart_keeps_everything(engines: Engines, engine: StorageEngine) -> None:
    alice = user("alice")
    await engine.insert_users([alice])
    await engine.insert_rooms([room("r1", "alice", "bob"), room("r2", "carol")])
    await engine.set_participants("r2", ["carol", "alice"], LATER)
    batch = [msg("r1", cmid="c-1"), msg("r2"), msg("r1", sender="bob")]
    rows = stored(await engine.append_messages(batch))
    await engine.delete_room("r2")
    await engine.insert_rooms([room("r3")])
    rooms, head, recent = await engine.load_rooms(), await engine.log_head(), await engine.recent_idempotent_sends(9)

    engine = await engines.restart(engine)
    assert await engine.get_users(["alice"]) == {"alice": alice}
    assert await engine.load_rooms() == rooms
    assert await everything(engine, "r1") == [rows[0], rows[2]]
    assert await everything(engine, "r2") == []
    assert await engine.log_head() == head
    assert await engine.recent_idempotent_sends(9) == recent
    assert await engine.cursors_at(["r1", "r2"], head) == {"r1": 2, "r2": 0}

    # Seq continues from the stored value; repeats and retries are still recognised.
    results = await engine.append_messages([msg("r1", cmid="c-1"), *batch, msg("r1"), msg("r3")])
    # r2's message went with its room: its retry finds neither the row nor the room.
    assert results[:4] == [Appended(rows[0], duplicate=True), Appended(rows[0]), Appended(None), Appended(rows[2])]
    new = stored(results[4:])
    assert [(m.room_id, m.seq) for m in new] == [("r1", 3), ("r3", 1)]
    assert head < new[0].pk < new[1].pk


async def test_delete_all_messages_counts_and_seq_never_goes_back(engines: Engines, engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2"), room("r3")])
    assert await engine.delete_all_messages() == (0, 0)
    await engine.append_messages([msg("r1"), msg("r2"), msg("r1", cmid="c-1"), msg("r2"), msg("r1")])
    assert await engine.delete_all_messages() == (5, 2)
    assert await engine.delete_all_messages() == (0, 0)
    for room_id in ("r1", "r2", "r3"):
        assert await everything(engine, room_id) == []
    assert await engine.recent_idempotent_sends(10) == []
    assert await last_seqs(engine) == {"r1": 3, "r2": 2, "r3": 0}
    assert [m.seq for m in stored(await engine.append_messages([msg("r1")]))] == [4]

    head = await engine.log_head()
    assert await engine.delete_all_messages() == (1, 1)

    engine = await engines.restart(engine)
    assert await engine.log_head() == head  # every message is gone, and the head is where it was
    assert await last_seqs(engine) == {"r1": 4, "r2": 2, "r3": 0}
    rows = stored(await engine.append_messages([msg("r2"), msg("r1")]))
    assert [m.seq for m in rows] == [3, 5]
    assert head < rows[0].pk < rows[1].pk


# -- order -----------------------------------------------------------------------------------------------
async def test_writes_from_many_tasks_are_applied_in_call_order(engine: StorageEngine) -> None:
    """A write's place is fixed when it is called, not when it is awaited: the room registry changes memory, then
    calls the engine with no await in between, and the database must see the same order."""
    await engine.insert_rooms([room("r1"), room("r2")])
    called: list[NewMessage] = []
    participants: list[list[str]] = []

    async def send(n: int) -> None:
        m = msg("r2" if n % 3 == 0 else "r1")
        called.append(m)  # no checkpoint between this and the engine's call
        await engine.append_messages([m])

    async def set_members(n: int) -> None:
        members = [f"u{n}", "alice"]
        participants.append(members)
        await engine.set_participants("r2", members, NOW)

    async with trio.open_nursery() as tasks:
        for n in range(60):
            tasks.start_soon(send if n % 4 else set_members, n)
    for room_id in ("r1", "r2"):
        assert [m.id for m in await everything(engine, room_id)] == [m.id for m in called if m.room_id == room_id]
    rows = [m for room_id in ("r1", "r2") for m in await everything(engine, room_id)]
    assert [m.id for m in sorted(rows, key=lambda m: m.pk)] == [m.id for m in called]  # pks in call order too
    [r2] = [r for r in await engine.load_rooms() if r.room_id == "r2"]
    assert list(r2.participants) == participants[-1]


async def test_appends_from_many_tasks_get_gap_free_seqs_in_pk_order(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1"), room("r2")])
    got: list[StoredMessage] = []

    async def writer(room_id: str) -> None:
        for _ in range(15):
            got.extend(stored(await engine.append_messages([msg(room_id), msg(room_id)])))

    async with trio.open_nursery() as writers:
        for n in range(8):
            writers.start_soon(writer, ("r1", "r2")[n % 2])
    for room_id in ("r1", "r2"):
        rows = await everything(engine, room_id)
        assert [m.seq for m in rows] == list(range(1, 121))
        assert [m.pk for m in rows] == sorted(m.pk for m in rows)  # within a room seq and pk rise together
        assert sorted(rows, key=lambda m: m.pk) == sorted((m for m in got if m.room_id == room_id), key=lambda m: m.pk)


# -- a stopped engine ------------------------------------------------------------------------------------
def every_call(engine: StorageEngine) -> list[Callable[[], Awaitable[object]]]:
    return [
        engine.check_writable,
        lambda: engine.insert_users([user("x")]),
        lambda: engine.get_users(["x"]),
        engine.delete_all_users,
        engine.load_rooms,
        lambda: engine.insert_rooms([room("x")]),
        lambda: engine.set_participants("x", ["alice"], NOW),
        lambda: engine.delete_room("x"),
        lambda: engine.append_messages([msg("x")]),
        lambda: engine.history(HistoryQuery("x", 10)),
        lambda: engine.cursors_at(["x"], 1),
        engine.log_head,
        lambda: engine.recent_idempotent_sends(10),
        lambda: engine.begin_fast_run(10),
        engine.end_fast_run,
        engine.delete_all_messages,
    ]


async def test_calls_to_a_stopped_or_never_started_engine_raise_closed(engines: Engines, engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1")])
    await engine.check_writable()
    await engines.stop(engine)
    for call in [*every_call(engine), *every_call(open_storage(engines.url))]:
        with pytest.raises(StorageClosedError):
            await call()


# -- a property over any interleaving --------------------------------------------------------------------
_examples = itertools.count(1)
# One message: (room index, sender index, clientMsgId index or None for a message without one).
_message_specs = st.tuples(st.integers(0, 2), st.integers(0, 1), st.none() | st.integers(0, 3))
# A step is a new batch, or (an integer) a retry of an earlier batch exactly as it was sent.
_steps = st.lists(
    st.one_of(st.lists(_message_specs, min_size=1, max_size=8), st.integers(min_value=0, max_value=50)),
    min_size=1,
    max_size=12,
)


# pytest-trio runs every example in a trio.run of its own, but its async fixtures cannot be set up again for a
# second example (their setup events belong to the first run: the second example hangs). So this test takes the
# database URL, a sync fixture shared by every example, and opens an engine on it per example, with rooms of the
# example's own: the database is per test, not per example.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
async def test_property_any_interleaving_of_batches_repeats_and_retries(
    database_url: str, steps: list[list[tuple[int, int, int | None]] | int]
) -> None:
    async with trio.open_nursery() as nursery:
        engine = await Engines(database_url, nursery).start()
        await check_interleaving(engine, steps)
        nursery.cancel_scope.cancel()


async def check_interleaving(engine: StorageEngine, steps: list[list[tuple[int, int, int | None]] | int]) -> None:
    """Each room's stored seqs are 1..n gap-free in batch order, every repeat maps to the first stored row, a
    retried batch returns its stored rows, nothing is stored twice, and pks rise in commit order."""
    example = next(_examples)
    rooms = [f"p{example}-r{i}" for i in range(3)]
    senders = ["alice", "bob"]
    await engine.insert_rooms([room(r, *senders) for r in rooms])
    head = await engine.log_head()

    by_id: dict[str, StoredMessage] = {}
    by_key: dict[tuple[str, str, str], StoredMessage] = {}
    per_room: dict[str, list[str]] = {r: [] for r in rooms}
    commit_order: list[StoredMessage] = []
    sent: list[list[NewMessage]] = []
    for step in steps:
        if isinstance(step, int):
            if not sent:
                continue
            batch = sent[step % len(sent)]
        else:
            batch = [msg(rooms[r], sender=senders[s], cmid=None if c is None else f"c{c}") for r, s, c in step]
            sent.append(batch)
        results = await engine.append_messages(batch)
        assert len(results) == len(batch)
        for m, result in zip(batch, results, strict=True):
            key = None if m.client_msg_id is None else (m.room_id, m.sender, m.client_msg_id)
            if m.id in by_id:  # a retry: the stored row as it is
                assert result == Appended(by_id[m.id])
            elif key is not None and key in by_key:  # a repeat: the first stored row
                assert result == Appended(by_key[key], duplicate=True)
            else:
                assert result.message is not None and not result.duplicate
                new = result.message
                seq = len(per_room[m.room_id]) + 1
                assert new == StoredMessage(
                    m.id, m.room_id, seq, m.sender, m.content, m.timestamp, new.created_at, m.client_msg_id, new.pk
                )
                assert new.pk > (commit_order[-1].pk if commit_order else head)
                by_id[m.id] = new
                per_room[m.room_id].append(m.id)
                commit_order.append(new)
                if key is not None:
                    by_key[key] = new

    for room_id, ids in per_room.items():
        rows = await everything(engine, room_id)
        assert [m.seq for m in rows] == list(range(1, len(ids) + 1))
        assert rows == [by_id[i] for i in ids]  # in batch order, each once
    assert {r: s for r, s in (await last_seqs(engine)).items() if r in per_room} == {
        r: len(ids) for r, ids in per_room.items()
    }


async def test_participants_change_relative_to_what_is_stored(engine: StorageEngine) -> None:
    await engine.insert_rooms([room("r1", "alice", "bob")])
    assert await engine.change_participants("r1", ["carol", "bob", "carol"], None, LATER) == ("alice", "bob", "carol")
    # Another change computed elsewhere from an older list still counts both: relative, not a whole list.
    assert await engine.change_participants("r1", ["dave"], None, LATER) == ("alice", "bob", "carol", "dave")
    assert await engine.change_participants("r1", (), "bob", LATER) == ("alice", "carol", "dave")
    [stored] = await engine.load_rooms(["r1"])
    assert (stored.participants, stored.updated_at) == (("alice", "carol", "dave"), LATER)
    await engine.append_messages([msg("r1")])
    for name in ("alice", "carol"):
        await engine.change_participants("r1", (), name, LATER)
    assert await engine.change_participants("r1", (), "dave", LATER) == ()  # the last one left: deleted
    assert await engine.load_rooms(["r1"]) == []
    assert await engine.history(HistoryQuery("r1", 10)) == [], "its messages went with it"
    assert await engine.change_participants("r1", ["eve"], None, LATER) is None

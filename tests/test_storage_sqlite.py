"""The SQLite storage beyond the engine contract (tests/test_storage_contract.py runs that on every engine): the
schema, the synchronous core's internals, the worker thread's shutdown, and database URLs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from storage import open_storage
from storage.errors import DatabaseInUseError, SchemaTooNewError, StorageClosedError, UnsupportedDatabaseError
from storage.open import redact
from storage.records import HistoryQuery, NewMessage, RoomRecord
from storage.sqlite.engine import SqliteEngine
from storage.sqlite.schema import SCHEMA_VERSION
from storage.sqlite.store import SqliteStore
from storage.timefmt import iso_utc

NOW = "2026-01-01T00:00:00.000Z"


def room(room_id: str, *members: str) -> RoomRecord:
    return RoomRecord(room_id, f"room {room_id}", members or ("alice",), "alice", NOW, NOW)


def message(room_id: str, n: int, *, sender: str = "alice", client_msg_id: str | None = None) -> NewMessage:
    return NewMessage(
        f"{room_id}-{n}-{time.monotonic_ns()}", room_id, sender, f"m{n}", NOW, 1_767_225_600_000, client_msg_id
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(str(tmp_path / "s.db"))


# -- schema ------------------------------------------------------------------------------------------
def test_fresh_database_gets_wal_and_current_schema(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "nested" / "dir" / "s.db"))
    assert store.schema_version_found == 0
    store.close()
    conn = sqlite3.connect(tmp_path / "nested" / "dir" / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE room_id = ? AND seq < ? ORDER BY seq DESC LIMIT 100", ("r", 5)
    ).fetchall()
    assert any("messages_room_seq" in row[-1] for row in plan), plan
    assert SqliteStore(str(tmp_path / "nested" / "dir" / "s.db")).schema_version_found == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="upgrade the server"):
        SqliteStore(str(path))


# -- messages ----------------------------------------------------------------------------------------
def test_idempotency_lookup_covers_batches_bigger_than_one_query(store: SqliteStore) -> None:
    # The lookups of earlier sends (by key) and of stored ids go in chunks; a batch of 1,200 must find every one.
    store.insert_rooms([room("r1", "alice", "bob")])
    batch = [message("r1", n, sender=("alice", "bob")[n % 2], client_msg_id=f"c-{n}") for n in range(1200)]
    first = store.append_messages(batch)
    assert [r.message.seq for r in first if r.message] == list(range(1, 1201))
    # The clients send again: new messages (new ids) under the same clientMsgIds.
    again = [message("r1", n, sender=("alice", "bob")[n % 2], client_msg_id=f"c-{n}") for n in reversed(range(1200))]
    retried = store.append_messages([*again, message("r1", 1200, client_msg_id="new")])
    assert all(r.duplicate for r in retried[:-1])
    assert [r.message for r in retried[:-1]] == [r.message for r in first[::-1]]
    assert not retried[-1].duplicate and retried[-1].message is not None and retried[-1].message.seq == 1201
    # A retry: the very same messages (ids) come back as they were stored, not as duplicates.
    assert store.append_messages(batch) == first


def test_failed_batch_hands_out_the_same_seqs_again(store: SqliteStore) -> None:
    store.insert_rooms([room("r1")])
    store.append_messages([message("r1", 1)])
    clash = message("r1", 2)
    with pytest.raises(sqlite3.IntegrityError):  # the same message id twice: the whole batch rolls back
        store.append_messages([clash, message("r1", 3), clash])
    [ok] = store.append_messages([message("r1", 4)])
    assert ok.message is not None and ok.message.seq == 2
    assert [m.seq for m in store.history(HistoryQuery("r1", 100))] == [1, 2]


# -- the async engine --------------------------------------------------------------------------------
async def test_engine_commits_writes_queued_before_shutdown(tmp_path: Path) -> None:
    path = str(tmp_path / "e.db")
    engine = SqliteEngine(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.insert_rooms([room("r1")])
        pending = engine._thread.submit(engine._open.append_messages, [message("r1", i) for i in range(50)])
        nursery.cancel_scope.cancel()  # shut down with the batch still queued
    assert [m.seq for m in SqliteStore(path).history(HistoryQuery("r1", 100))] == list(range(1, 51))
    assert (await pending.wait())[49].message is not None
    with pytest.raises(StorageClosedError):
        await engine.load_rooms()


def test_open_storage_urls(tmp_path: Path) -> None:
    engine = open_storage(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(engine, SqliteEngine) and engine.path == f"{tmp_path}/x.db"
    relative = open_storage("sqlite:///data/x.db")
    assert isinstance(relative, SqliteEngine) and relative.path == "data/x.db"
    with pytest.raises(UnsupportedDatabaseError, match="sqlite:///"):
        open_storage("mysql://localhost/db")


def test_engine_options_travel_in_the_url(tmp_path: Path) -> None:
    tuned = open_storage(f"sqlite:///{tmp_path}/x.db?synchronous=normal&busy_timeout=0.5")
    assert isinstance(tuned, SqliteEngine)
    assert (tuned.path, tuned.synchronous, tuned.busy_timeout) == (f"{tmp_path}/x.db", "NORMAL", 0.5)
    for bad, says in [
        ("?synchronous=sometimes", "FULL, NORMAL, OFF or EXTRA"),
        ("?busy_timeout=-1", "seconds"),
        ("?busy_timeout=1&busy_timeout=2", "twice"),
        ("?journal=wal", "unknown sqlite database option"),
    ]:
        with pytest.raises(UnsupportedDatabaseError, match=says):
            open_storage(f"sqlite:///{tmp_path}/x.db{bad}")


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://chat:s3cret@db.example:5433/minitalk?sslmode=require") == (
        "postgresql://chat:***@db.example:5433/minitalk?sslmode=require"
    )
    assert redact("postgresql://chat@127.0.0.1/minitalk") == "postgresql://chat@127.0.0.1/minitalk"


def test_iso_timestamps_match_javascript() -> None:
    assert iso_utc(1750748534.663) == "2025-06-24T07:02:14.663Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


async def test_a_second_engine_on_one_file_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    path = str(tmp_path / "one.db")
    first = SqliteEngine(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with pytest.raises(DatabaseInUseError, match="SQLite serves one process"):
            await nursery.start(SqliteEngine(path).run)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # the first one stopped: the lock went with it
        await nursery.start(SqliteEngine(path).run)
        nursery.cancel_scope.cancel()

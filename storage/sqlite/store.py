"""The synchronous SQLite core. Every method runs on the engine's one worker thread, never on the loop.

It also owns the per-room ``seq`` counters: they live here, beside the connection, so that assigning a
seq and committing it happen on the same thread in the same transaction. A failed transaction restores
the counters, so seqs stay gap-free in commit order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from storage.assign import ROW_COLUMNS, BatchAssigner, IdempotencyKey, changed_participants, idempotency_key
from storage.records import Appended, HistoryQuery, NewMessage, RoomRecord, StoredMessage, UserRecord
from storage.sqlite.schema import migrate, transaction
from storage.timefmt import iso_utc

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_participants_encoder = msgspec.json.Encoder()
_participants_decoder = msgspec.json.Decoder(tuple[str, ...])

_MESSAGE_COLUMNS = "id, room_id, seq, sender, content, timestamp, created_at, client_msg_id, pk"
_QUALIFIED_COLUMNS = ", ".join(f"m.{column}" for column in _MESSAGE_COLUMNS.split(", "))
_FAST_RUN_KEY = "fast_run_seq_gap"
_PK_FLOOR_KEY = "pk_floor"
# Keys per idempotency lookup: 3 parameters each, well under SQLite's 32,766-parameter limit.
_KEYS_PER_QUERY = 500


def _message(row: tuple[str, str, int, str, str, str, str, str | None, int]) -> StoredMessage:
    return StoredMessage(*row)


class _LogReads:
    """The log reads both connections serve (the writer's for an in-memory database, the reader's otherwise)."""

    _conn: sqlite3.Connection

    def history(self, q: HistoryQuery) -> list[StoredMessage]:
        return read_history(self._conn, q)

    def cursors_at(self, room_ids: Sequence[str], pk: int) -> dict[str, int]:
        return cursors_at(self._conn, room_ids, pk)

    def history_after(self, cursors: Mapping[str, int], limit: int) -> dict[str, list[StoredMessage]]:
        return history_after(self._conn, cursors, limit)


class SqliteStore(_LogReads):
    """One connection, one thread: see the module docstring."""

    def __init__(self, path: str, *, synchronous: Synchronous = "FULL", busy_timeout: float = 5.0) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see schema.transaction).
        # check_same_thread=False: the connection is created on the worker thread's caller at open time
        # only in tests; in the engine every call, open included, happens on the worker thread.
        # timeout: how long a statement waits for another connection's lock before "database is locked".
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        self._conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        # FULL makes each commit durable against power loss; group commit pays the fsync once per batch.
        self._conn.execute(f"PRAGMA synchronous = {synchronous}")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self.schema_version_found = migrate(self._conn)
        self.seq_skipped = self._skip_seqs_after_unclean_fast_run()
        self._last_seq: dict[str, int] = dict(self._conn.execute("SELECT room_id, last_seq FROM rooms"))
        # pks are given here, never reused: not after a delete either (the floor is kept in meta), so a
        # reconnecting client's offset keeps meaning the same place in the log.
        top = self._conn.execute(
            "SELECT max(coalesce((SELECT max(pk) FROM messages), 0),"
            " coalesce((SELECT value FROM meta WHERE key = ?), 0))",
            (_PK_FLOOR_KEY,),
        ).fetchone()[0]
        self._next_pk = int(top) + 1

    def close(self) -> None:
        self._conn.close()

    def check_writable(self) -> None:
        """Commit one tiny write: raises as a real write would (locked, read-only, disk full, I/O error).

        A real write, not only the lock: on a full disk the lock is free and only the commit fails.
        """
        with transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ready_probe', 1)"
                " ON CONFLICT (key) DO UPDATE SET value = value + 1"
            )

    # -- the fast-mode crash marker ----------------------------------------------------------------
    def begin_fast_run(self, seq_gap: int) -> None:
        """Record, durably, that seqs may be handed out before their messages are stored.

        Until ``end_fast_run``, up to ``seq_gap`` messages per room may have been broadcast with a seq and not
        stored yet. If the process dies in that state, the next open skips every room's counter by
        ``seq_gap``: a seq a member may have seen is never given to another message.
        """
        with transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_FAST_RUN_KEY, seq_gap),
            )

    def end_fast_run(self) -> None:
        """Everything that was broadcast is stored: a later open needs no skip."""
        with transaction(self._conn) as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (_FAST_RUN_KEY,))

    def _skip_seqs_after_unclean_fast_run(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (_FAST_RUN_KEY,)).fetchone()
        if row is None:
            return 0
        gap = int(row[0])
        with transaction(self._conn) as conn:
            conn.execute("UPDATE rooms SET last_seq = last_seq + ?", (gap,))
            conn.execute("DELETE FROM meta WHERE key = ?", (_FAST_RUN_KEY,))
        return gap

    def recent_idempotent_sends(self, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` stored messages that carry a clientMsgId, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE client_msg_id IS NOT NULL ORDER BY pk DESC LIMIT ?",
            (limit,),
        ).fetchall()
        rows.reverse()
        return [_message(r) for r in rows]

    # -- users -------------------------------------------------------------------------------------
    def insert_users(self, users: Sequence[UserRecord]) -> list[bool]:
        inserted: list[bool] = []
        with transaction(self._conn) as conn:
            for u in users:
                cur = conn.execute(
                    "INSERT INTO users (id, username, password_hash, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO NOTHING",
                    (u.id, u.username, u.password_hash, u.created_at, u.updated_at),
                )
                inserted.append(cur.rowcount == 1)
        return inserted

    def get_users(self, usernames: Sequence[str]) -> dict[str, UserRecord]:
        found: dict[str, UserRecord] = {}
        wanted = list(dict.fromkeys(usernames))
        # SQLite's default limit on bound parameters is 32766; stay far below it.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT id, username, password_hash, created_at, updated_at FROM users WHERE username IN ({marks})",
                chunk,
            ):
                found[row[1]] = UserRecord(*row)
        return found

    def delete_all_users(self) -> int:
        with transaction(self._conn) as conn:
            return conn.execute("DELETE FROM users").rowcount

    # -- rooms -------------------------------------------------------------------------------------
    def load_rooms(self, room_ids: Sequence[str] | None = None) -> list[RoomRecord]:
        rows = self._conn.execute(
            "SELECT room_id, name, participants, created_by, created_at, updated_at, last_seq FROM rooms ORDER BY pk"
        )
        wanted = None if room_ids is None else set(room_ids)
        return [
            RoomRecord(rid, name, _participants_decoder.decode(parts), by, created, updated, self._last_seq[rid])
            for rid, name, parts, by, created, updated, _ in rows
            if wanted is None or rid in wanted
        ]

    def room_heads(self, room_ids: Sequence[str]) -> dict[str, int]:
        return {room_id: self._last_seq[room_id] for room_id in room_ids if room_id in self._last_seq}

    def insert_rooms(self, rooms: Sequence[RoomRecord]) -> None:
        with transaction(self._conn) as conn:
            conn.executemany(
                "INSERT INTO rooms (room_id, name, participants, created_by, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.room_id,
                        r.name,
                        _participants_encoder.encode(r.participants),
                        r.created_by,
                        r.created_at,
                        r.updated_at,
                    )
                    for r in rooms
                ],
            )
        for r in rooms:
            self._last_seq[r.room_id] = 0

    def set_participants(self, room_id: str, participants: Sequence[str], updated_at: str) -> None:
        with transaction(self._conn) as conn:
            conn.execute(
                "UPDATE rooms SET participants = ?, updated_at = ? WHERE room_id = ?",
                (_participants_encoder.encode(list(participants)), updated_at, room_id),
            )

    def change_participants(
        self, room_id: str, add: Sequence[str], remove: str | None, updated_at: str
    ) -> tuple[str, ...] | None:
        with transaction(self._conn) as conn:
            row = conn.execute("SELECT participants FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
            if row is None:
                return None
            now = changed_participants(_participants_decoder.decode(row[0]), add, remove)
            if not now:
                self._keep_pk_floor(conn)
                conn.execute("DELETE FROM messages WHERE room_id = ?", (room_id,))
                conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            else:
                conn.execute(
                    "UPDATE rooms SET participants = ?, updated_at = ? WHERE room_id = ?",
                    (_participants_encoder.encode(list(now)), updated_at, room_id),
                )
        if not now:
            self._last_seq.pop(room_id, None)
        return now

    def _keep_pk_floor(self, conn: sqlite3.Connection) -> None:
        """Before deleting messages: remember the highest pk given, so no later message gets one again."""
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_PK_FLOOR_KEY, self._next_pk - 1),
        )

    def delete_room(self, room_id: str) -> None:
        with transaction(self._conn) as conn:
            self._keep_pk_floor(conn)
            conn.execute("DELETE FROM messages WHERE room_id = ?", (room_id,))
            conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
        self._last_seq.pop(room_id, None)

    # -- messages ----------------------------------------------------------------------------------
    def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        saved_counters = dict(self._last_seq)
        saved_pk = self._next_pk
        try:
            with transaction(self._conn) as conn:
                assigner = BatchAssigner(
                    self._last_seq,
                    created_at=iso_utc(time.time()),  # one commit, one commit time
                    next_pk=self._take_pk,
                    prior=self._prior_sends(conn, batch),
                    stored_ids=self._stored_ids(conn, batch),
                )
                results = [assigner.assign(m) for m in batch]
                # One executemany for the batch: the per-row cost stays in SQLite's C code.
                conn.executemany(
                    f"INSERT INTO messages ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})",
                    assigner.rows,
                )
                conn.executemany(
                    "UPDATE rooms SET last_seq = ? WHERE room_id = ?",
                    [(self._last_seq[room_id], room_id) for room_id in assigner.touched],
                )
        except BaseException:
            self._last_seq = saved_counters  # nothing was committed: hand the seqs out again
            self._next_pk = saved_pk
            raise
        return results

    def _take_pk(self) -> int:
        pk = self._next_pk
        self._next_pk += 1
        return pk

    def _stored_ids(self, conn: sqlite3.Connection, batch: Sequence[NewMessage]) -> dict[str, StoredMessage]:
        """Messages of the batch stored already: a batch retried after a commit that reported failure but
        reached the disk must not store them again (the engine contract's retry rule)."""
        ids = [m.id for m in batch]
        found: dict[str, StoredMessage] = {}
        for start in range(0, len(ids), _KEYS_PER_QUERY):
            chunk = ids[start : start + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN ({marks})", chunk):
                found[row[0]] = _message(row)
        return found

    def _prior_sends(
        self, conn: sqlite3.Connection, batch: Sequence[NewMessage]
    ) -> dict[IdempotencyKey, StoredMessage]:
        """Messages already stored under the batch's (room, sender, clientMsgId) keys: one query per chunk."""
        keys = list({key for m in batch if (key := idempotency_key(m)) is not None})
        found: dict[IdempotencyKey, StoredMessage] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            cursor = conn.execute(
                f"SELECT {_QUALIFIED_COLUMNS} FROM (VALUES {values}) AS k JOIN messages m"
                " ON m.room_id = k.column1 AND m.sender = k.column2 AND m.client_msg_id = k.column3",
                [part for key in chunk for part in key],
            )
            for row in cursor:
                stored = _message(row)
                key = idempotency_key(stored)
                if key is not None:  # always, by the join
                    found[key] = stored
        return found

    def log_head(self) -> int:
        """The highest pk ever given (0 for an empty log)."""
        return self._next_pk - 1

    def delete_all_messages(self) -> tuple[int, int]:
        with transaction(self._conn) as conn:
            self._keep_pk_floor(conn)
            rooms = conn.execute("SELECT COUNT(DISTINCT room_id) FROM messages").fetchone()[0]
            deleted = conn.execute("DELETE FROM messages").rowcount
        return deleted, int(rooms)


def read_history(conn: sqlite3.Connection, q: HistoryQuery) -> list[StoredMessage]:
    """One page of a room's history (see :class:`HistoryQuery`): a range scan on ``(room_id, seq)``."""
    where = ["room_id = ?"]
    args: list[object] = [q.room_id]
    if q.after_seq is not None:
        where.append("seq > ?")
        args.append(q.after_seq)
    if q.before_seq is not None:
        where.append("seq < ?")
        args.append(q.before_seq)
    if q.since_ms is not None:
        where.append("ts_ms > ?")
        args.append(q.since_ms)
    # Forward paging reads the oldest rows after the cursor; otherwise the newest, then reverses.
    direction = "ASC" if q.after_seq is not None else "DESC"
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(where)} ORDER BY seq {direction} LIMIT ?",
        [*args, q.limit],
    ).fetchall()
    if direction == "DESC":
        rows.reverse()
    return [_message(r) for r in rows]


def history_after(conn: sqlite3.Connection, cursors: Mapping[str, int], limit: int) -> dict[str, list[StoredMessage]]:
    """Each room's oldest ``limit`` messages after its cursor (one range scan per room)."""
    pages = {
        room_id: read_history(conn, HistoryQuery(room_id, limit, after_seq=after)) for room_id, after in cursors.items()
    }
    return {room_id: rows for room_id, rows in pages.items() if rows}


def cursors_at(conn: sqlite3.Connection, room_ids: Sequence[str], pk: int) -> dict[str, int]:
    """Each room's last seq among messages with a pk up to ``pk`` (0 where it has none): where a client whose
    offset is ``pk`` stands. Within a room seq and pk rise together, so this walks the room's index back
    from its newest message over the ones after ``pk`` only."""
    cursors: dict[str, int] = {}
    for room_id in room_ids:
        row = conn.execute(
            "SELECT seq FROM messages WHERE room_id = ? AND pk <= ? ORDER BY seq DESC LIMIT 1", (room_id, pk)
        ).fetchone()
        cursors[room_id] = int(row[0]) if row is not None else 0
    return cursors


class SqliteReader(_LogReads):
    """A second connection, on a thread of its own, for history and catch-up reads.

    Why: in WAL mode readers never block the writer nor wait for it, but one connection on one thread runs
    its calls in order, so a read queued behind a group commit would wait for its fsync, and a thousand
    catch-up reads would delay every commit. Here they run beside the writer. Each read is its own
    transaction, so it sees every commit that finished before it started.
    """

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        self._conn.execute("PRAGMA query_only = ON")  # this connection never writes: a bug here cannot either

    def close(self) -> None:
        self._conn.close()

"""The PostgreSQL statements: asyncio coroutines on one asyncpg connection each, no Trio here.

The engine (``storage/postgres/engine.py``) runs them on asyncio's side of the bridge: writes on its one
writer connection, in submission order; reads on a pooled connection. Each function is one job: one
crossing of the bridge, however many statements it sends.

Group commit (``append_messages``), one transaction:
1. lock the batch's room rows in id order (``FOR UPDATE``) and read their ``last_seq``, and take the batch's
   pks from the sequence: seqs are assigned from the stored counter inside the transaction, so they
   continue after a restart and no other writer can hand out the same seq;
2. read the rows already stored under the batch's message ids (a batch retried after a commit whose answer
   was lost) and idempotency keys, and let :class:`~storage.assign.BatchAssigner` decide (the rules both
   engines share);
3. COPY the new rows into a temporary staging table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING`` and
   the rooms' new ``last_seq`` in one statement: COPY is the cheapest way into PostgreSQL for many rows, and
   the conflict clause means a row that is somehow stored already is never stored twice (the inserted count
   is checked, so it is never hidden).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import asyncpg
import msgspec

from storage.assign import ROW_COLUMNS, BatchAssigner, IdempotencyKey, changed_participants, idempotency_key
from storage.errors import StorageError
from storage.records import Appended, HistoryQuery, NewMessage, RoomRecord, StoredMessage, UserRecord
from storage.timefmt import iso_utc

_MESSAGE_COLUMNS = "id, room_id, seq, sender, content, timestamp, created_at, client_msg_id, pk"
_QUALIFIED_COLUMNS = ", ".join(f"m.{column}" for column in _MESSAGE_COLUMNS.split(", "))
_ROW_COLUMNS = ", ".join(ROW_COLUMNS)
_FAST_RUN_KEY = "fast_run_seq_gap"
_PK_FLOOR_KEY = "pk_floor"
_STAGING = "message_staging"
# Every process LISTENs here: one NOTIFY per group commit ({"o": origin, "r": {room: last seq}}) and per room
# change ({"o": origin, "rooms": [...]}); a payload past NOTIFY_LIMIT becomes {"o": origin, "resync": true}.
CHANNEL = "minitalk_changes"
NOTIFY_LIMIT = 7_900  # PostgreSQL refuses payloads of 8,000 bytes or more
# Held from a commit's first pk to its COMMIT, across every process (see _log_transaction).
LOG_LOCK = 0x6D696E69746C6F67  # "minitlog"
_notice_encoder = msgspec.json.Encoder()


class UnexpectedConflictError(StorageError):
    """A row the batch's own lookups said was new conflicted on insert: rolled back, a bug to report."""


def _message(row: asyncpg.Record) -> StoredMessage:
    return StoredMessage(*tuple(row))


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def prepare_writer(conn: asyncpg.Connection) -> None:
    """Per writer connection: the staging table group commit copies into (emptied at every commit)."""
    await conn.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (LIKE messages INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


async def check_writable(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES ('ready_probe', 1) ON CONFLICT (key) DO UPDATE SET value = meta.value + 1"
    )


# -- the fast-mode crash marker (see storage/engine.py) ---------------------------------------------------
async def begin_fast_run(conn: asyncpg.Connection, seq_gap: int) -> None:
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        _FAST_RUN_KEY,
        seq_gap,
    )


async def end_fast_run(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM meta WHERE key = $1", _FAST_RUN_KEY)


async def skip_seqs_after_unclean_fast_run(conn: asyncpg.Connection) -> int:
    """At open: if the last fast-mode run did not end cleanly, move every room's counter past what it may have
    handed out unstored. Returns the gap skipped (0: nothing to do)."""
    async with conn.transaction():
        gap = await conn.fetchval("DELETE FROM meta WHERE key = $1 RETURNING value", _FAST_RUN_KEY)
        if gap is None:
            return 0
        await conn.execute("UPDATE rooms SET last_seq = last_seq + $1", gap)
        return int(gap)


# -- users ---------------------------------------------------------------------------------------------
async def insert_users(conn: asyncpg.Connection, users: Sequence[UserRecord]) -> list[bool]:
    # One statement for the batch; a username taken before (or earlier in the batch) inserts nothing.
    inserted = {
        row[0]
        for row in await conn.fetch(
            "INSERT INTO users (id, username, password_hash, created_at, updated_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
            " ON CONFLICT (username) DO NOTHING RETURNING id",
            [u.id for u in users],
            [u.username for u in users],
            [u.password_hash for u in users],
            [u.created_at for u in users],
            [u.updated_at for u in users],
        )
    }
    return [u.id in inserted for u in users]


async def get_users(conn: asyncpg.Connection, usernames: Sequence[str]) -> dict[str, UserRecord]:
    rows = await conn.fetch(
        "SELECT id, username, password_hash, created_at, updated_at FROM users WHERE username = ANY($1::text[])",
        list(dict.fromkeys(usernames)),
    )
    return {row[1]: UserRecord(*tuple(row)) for row in rows}


async def delete_all_users(conn: asyncpg.Connection) -> int:
    return _count(await conn.execute("DELETE FROM users"))


# -- rooms ---------------------------------------------------------------------------------------------
async def load_rooms(conn: asyncpg.Connection, room_ids: Sequence[str] | None) -> list[RoomRecord]:
    columns = "room_id, name, participants, created_by, created_at, updated_at, last_seq"
    if room_ids is None:
        rows = await conn.fetch(f"SELECT {columns} FROM rooms ORDER BY pk")
    else:
        rows = await conn.fetch(f"SELECT {columns} FROM rooms WHERE room_id = ANY($1::text[]) ORDER BY pk", room_ids)
    return [RoomRecord(r[0], r[1], tuple(r[2]), r[3], r[4], r[5], int(r[6])) for r in rows]


async def room_heads(conn: asyncpg.Connection, room_ids: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT room_id, last_seq FROM rooms WHERE room_id = ANY($1::text[])", list(room_ids))
    return {row[0]: int(row[1]) for row in rows}


async def insert_rooms(conn: asyncpg.Connection, rooms: Sequence[RoomRecord], origin: str) -> None:
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO rooms (room_id, name, participants, created_by, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(r.room_id, r.name, list(r.participants), r.created_by, r.created_at, r.updated_at) for r in rooms],
        )
        await _notify(conn, origin, rooms=[r.room_id for r in rooms])


async def set_participants(
    conn: asyncpg.Connection, room_id: str, participants: Sequence[str], updated_at: str, origin: str
) -> None:
    async with conn.transaction():
        await conn.execute(
            "UPDATE rooms SET participants = $1, updated_at = $2 WHERE room_id = $3",
            list(participants),
            updated_at,
            room_id,
        )
        await _notify(conn, origin, rooms=[room_id])


async def _keep_pk_floor(conn: asyncpg.Connection) -> None:
    """Before deleting messages: remember the highest pk a message was given, so ``log_head`` never goes back."""
    await conn.execute(
        "INSERT INTO meta (key, value) SELECT $1, coalesce(max(pk), 0) FROM messages"
        " ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)",
        _PK_FLOOR_KEY,
    )


async def change_participants(  # noqa: PLR0917 -- a writer job: its arguments travel positionally
    conn: asyncpg.Connection, room_id: str, add: Sequence[str], remove: str | None, updated_at: str, origin: str
) -> tuple[str, ...] | None:
    """See the engine contract: the stored list changed under its row lock, so concurrent changes all count."""
    async with conn.transaction():
        stored = await conn.fetchval("SELECT participants FROM rooms WHERE room_id = $1 FOR UPDATE", room_id)
        if stored is None:
            return None
        now = changed_participants(stored, add, remove)
        if not now:
            await _keep_pk_floor(conn)
            await conn.execute("DELETE FROM messages WHERE room_id = $1", room_id)
            await conn.execute("DELETE FROM rooms WHERE room_id = $1", room_id)
        else:
            await conn.execute(
                "UPDATE rooms SET participants = $1, updated_at = $2 WHERE room_id = $3", list(now), updated_at, room_id
            )
        await _notify(conn, origin, rooms=[room_id])
    return now


async def delete_room(conn: asyncpg.Connection, room_id: str, origin: str) -> None:
    async with conn.transaction():
        # The room row first: a group commit appending to it holds that lock, so its rows are deleted too
        # instead of being left behind a room that is gone.
        await conn.execute("SELECT 1 FROM rooms WHERE room_id = $1 FOR UPDATE", room_id)
        await _keep_pk_floor(conn)
        await conn.execute("DELETE FROM messages WHERE room_id = $1", room_id)
        await conn.execute("DELETE FROM rooms WHERE room_id = $1", room_id)
        await _notify(conn, origin, rooms=[room_id])


# -- messages ------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _log_transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction that first takes the log lock (sent with BEGIN: no extra round trip).

    Why one committer at a time across every process: pks must rise in commit order across the whole log
    (a reconnecting client's offset ``g<pk>`` means "everything up to here"); with the lock held from the
    first pk to the commit, no pk is ever committed after a higher one. And measured on two cores, writers
    that overlap on shared room rows are slower in total than one (29-32k rows/s for one writer, 20-25k for
    2-8), so one at a time is also what measures best here; each process's next batch grows while it waits.
    """
    await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK})")
    try:
        yield
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(Exception):  # the connection may be gone: the server rolls back anyway
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


def _notice(origin: str, **fields: object) -> str:
    """A NOTIFY payload; past PostgreSQL's limit (8,000 bytes) it says only "resync"."""
    payload = _notice_encoder.encode({"o": origin, **fields}).decode()
    if len(payload.encode()) > NOTIFY_LIMIT:
        payload = _notice_encoder.encode({"o": origin, "resync": True}).decode()
    return payload


def head_notices(origin: str, heads: dict[str, int]) -> list[str]:
    """A commit's room heads as NOTIFY payloads under the size limit: a batch over many rooms sends several
    (one transaction, delivered together) rather than a resync that would make every process re-read all."""
    notices: list[str] = []
    chunk: dict[str, int] = {}
    size = 0
    for room_id, seq in heads.items():
        entry = len(room_id.encode()) + len(str(seq)) + 8  # "room":seq, with quotes and comma
        if chunk and size + entry > NOTIFY_LIMIT - 100:
            notices.append(_notice(origin, r=chunk))
            chunk, size = {}, 0
        chunk[room_id] = seq
        size += entry
    if chunk:
        notices.append(_notice(origin, r=chunk))
    return notices


async def _notify(conn: asyncpg.Connection, origin: str, **fields: object) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, _notice(origin, **fields))


async def append_messages(conn: asyncpg.Connection, batch: Sequence[NewMessage], origin: str) -> list[Appended]:
    """Group commit: see the module docstring. Six round trips (BEGIN and the log lock, counters and pks,
    stored rows, COPY, insert + counters + NOTIFY, COMMIT): each one waits for the database's turn on a CPU,
    so fewer is faster when the server and the database share cores."""
    async with _log_transaction(conn):
        # The room rows locked in id order (two writers lock shared rooms in the same order), their counters,
        # and enough pks for every message, ascending: within a room pk and seq rise together. A pk a repeat
        # does not use is skipped for good; pks only have to be unique and rising, not gap-free.
        locked = await conn.fetchrow(
            "WITH locked AS (SELECT room_id, last_seq FROM rooms WHERE room_id = ANY($1::text[])"
            " ORDER BY room_id FOR UPDATE)"
            " SELECT array(SELECT room_id FROM locked), array(SELECT last_seq FROM locked),"
            " array(SELECT nextval('messages_pk_seq') FROM generate_series(1, $2))",
            sorted({m.room_id for m in batch}),
            len(batch),
        )
        assert locked is not None  # a SELECT without FROM returns one row
        rooms, counters, pk_values = locked
        last_seq = dict(zip(rooms, counters, strict=True))
        stored_ids, prior = await _stored_before(conn, batch)
        assigner = BatchAssigner(
            last_seq,
            created_at=iso_utc(time.time()),  # one commit, one commit time
            next_pk=iter(sorted(pk_values)).__next__,
            prior=prior,
            stored_ids=stored_ids,
        )
        results = [assigner.assign(m) for m in batch]
        if assigner.rows:
            await conn.copy_records_to_table(_STAGING, records=assigner.rows, columns=ROW_COLUMNS)
        touched = sorted(assigner.touched)
        heads = {room_id: last_seq[room_id] for room_id in touched}
        # One statement moves the staged rows, writes the counters back (a data-modifying CTE always runs) and
        # tells the other processes (delivered at commit, dropped at rollback: one NOTIFY per group commit).
        inserted = await conn.fetchval(
            f"WITH inserted AS (INSERT INTO messages ({_ROW_COLUMNS}) SELECT {_ROW_COLUMNS} FROM {_STAGING}"
            " ON CONFLICT DO NOTHING RETURNING 1),"
            " counted AS (UPDATE rooms SET last_seq = v.last_seq"
            " FROM unnest($1::text[], $2::bigint[]) AS v(room_id, last_seq) WHERE rooms.room_id = v.room_id)"
            " SELECT (SELECT count(*) FROM inserted),"
            " (SELECT count(*) FROM (SELECT pg_notify($3, p) FROM unnest($4::text[]) AS p) AS sent)",
            touched,
            list(heads.values()),
            CHANNEL,
            head_notices(origin, heads),
        )
        if inserted != len(assigner.rows):
            raise UnexpectedConflictError(
                f"{len(assigner.rows) - inserted} of {len(assigner.rows)} new messages conflicted with stored"
                " rows; the batch was rolled back"
            )
    return results


async def _stored_before(
    conn: asyncpg.Connection, batch: Sequence[NewMessage]
) -> tuple[dict[str, StoredMessage], dict[IdempotencyKey, StoredMessage]]:
    """In one query: the batch's messages stored already (by id: a retry after a lost answer), and the
    messages stored under its (room, sender, clientMsgId) keys."""
    keys = list({key for m in batch if (key := idempotency_key(m)) is not None})
    rows = await conn.fetch(
        f"SELECT false, {_MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1::text[])"
        f" UNION ALL SELECT true, {_QUALIFIED_COLUMNS}"
        " FROM unnest($2::text[], $3::text[], $4::text[]) AS k(room_id, sender, cmid)"
        " JOIN messages m ON m.room_id = k.room_id AND m.sender = k.sender AND m.client_msg_id = k.cmid",
        [m.id for m in batch],
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    by_id: dict[str, StoredMessage] = {}
    by_key: dict[IdempotencyKey, StoredMessage] = {}
    for row in rows:
        stored = StoredMessage(*tuple(row)[1:])
        if not row[0]:
            by_id[stored.id] = stored
        elif (key := idempotency_key(stored)) is not None:  # always, by the join
            by_key[key] = stored
    return by_id, by_key


async def history(conn: asyncpg.Connection, q: HistoryQuery) -> list[StoredMessage]:
    """One page of a room's history (see :class:`HistoryQuery`): a range scan on ``(room_id, seq)``."""
    where = ["room_id = $1"]
    args: list[object] = [q.room_id]
    for clause, value in (("seq > ", q.after_seq), ("seq < ", q.before_seq), ("ts_ms > ", q.since_ms)):
        if value is not None:
            args.append(value)
            where.append(f"{clause}${len(args)}")
    args.append(q.limit)
    # Forward paging reads the oldest rows after the cursor; otherwise the newest, then reverses.
    direction = "ASC" if q.after_seq is not None else "DESC"
    rows = await conn.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(where)}"
        f" ORDER BY seq {direction} LIMIT ${len(args)}",
        *args,
    )
    messages = [_message(r) for r in rows]
    if direction == "DESC":
        messages.reverse()
    return messages


async def history_after(
    conn: asyncpg.Connection, cursors: Mapping[str, int], limit: int
) -> dict[str, list[StoredMessage]]:
    """Each room's oldest ``limit`` messages after its cursor, in one statement (one index range per room)."""
    rows = await conn.fetch(
        f"SELECT {_QUALIFIED_COLUMNS} FROM unnest($1::text[], $2::bigint[]) AS r(room_id, after)"
        f" CROSS JOIN LATERAL (SELECT {_MESSAGE_COLUMNS} FROM messages"
        " WHERE room_id = r.room_id AND seq > r.after ORDER BY seq LIMIT $3) AS m ORDER BY m.room_id, m.seq",
        list(cursors),
        list(cursors.values()),
        limit,
    )
    pages: dict[str, list[StoredMessage]] = {}
    for row in rows:
        message = _message(row)
        pages.setdefault(message.room_id, []).append(message)
    return pages


async def cursors_at(conn: asyncpg.Connection, room_ids: Sequence[str], pk: int) -> dict[str, int]:
    """Each room's last seq among messages with a pk up to ``pk`` (0 where none): one index walk per room."""
    rows = await conn.fetch(
        "SELECT r.room_id, coalesce((SELECT m.seq FROM messages m WHERE m.room_id = r.room_id AND m.pk <= $2"
        " ORDER BY m.seq DESC LIMIT 1), 0) FROM unnest($1::text[]) AS r(room_id)",
        list(room_ids),
        pk,
    )
    return {row[0]: int(row[1]) for row in rows}


async def log_head(conn: asyncpg.Connection) -> int:
    """The highest pk a message was given (0 for an empty log). Asked on the writer, after every queued commit.

    Not the sequence's last value: a batch takes a pk for each of its messages and gives none to a repeat, a
    retried message or a deleted room's, and a rolled-back batch gives none at all. The stored messages' highest
    pk, or the floor a delete kept, is the head the contract names (as SQLite's engine counts it).
    """
    value = await conn.fetchval(
        "SELECT greatest((SELECT coalesce(max(pk), 0) FROM messages),"
        " (SELECT coalesce(max(value), 0) FROM meta WHERE key = $1))",
        _PK_FLOOR_KEY,
    )
    return int(value)


async def recent_idempotent_sends(conn: asyncpg.Connection, limit: int) -> list[StoredMessage]:
    rows = await conn.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE client_msg_id IS NOT NULL ORDER BY pk DESC LIMIT $1", limit
    )
    return [_message(r) for r in reversed(rows)]


async def delete_all_messages(conn: asyncpg.Connection) -> tuple[int, int]:
    async with conn.transaction():
        await _keep_pk_floor(conn)
        rooms = await conn.fetchval("SELECT count(DISTINCT room_id) FROM messages")
        deleted = _count(await conn.execute("DELETE FROM messages"))
    return deleted, int(rooms)

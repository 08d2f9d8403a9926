"""PostgreSQL schema and its migrations, versioned in the one-row table ``schema_version``.

The same logical schema as SQLite (``storage/sqlite/schema.py``): users, rooms (participants in order),
messages (per-room seq, a log-wide pk), meta. Each entry of ``MIGRATIONS`` moves the schema from version
*i* to *i + 1*; never edit a released entry, append a new one.

Why an advisory lock: two servers started at once on an empty database (a rolling deploy, a cluster) would
both see version 0 and both run ``CREATE TABLE``; one would fail half-way. ``migrate`` runs in one
transaction that first takes a transaction-scoped advisory lock, so the second server waits, then finds
the schema current and does nothing.
"""

from __future__ import annotations

import asyncpg

from storage.errors import SchemaTooNewError

# An arbitrary constant, the same in every server: the lock that serialises migrations.
MIGRATION_LOCK = 0x6D696E6974616C6B  # "minitalk"

MIGRATIONS: tuple[str, ...] = (
    # 1: the logical schema of SQLite's versions 1 and 2, in one step.
    """
    CREATE TABLE users (
        pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order
        id            text NOT NULL UNIQUE,
        username      text NOT NULL UNIQUE,  -- exact, case-sensitive, as the original
        password_hash text NOT NULL,
        created_at    text NOT NULL,
        updated_at    text NOT NULL
    );
    CREATE TABLE rooms (
        pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order, kept by GET /api/chatrooms
        room_id       text NOT NULL UNIQUE,
        name          text NOT NULL,
        participants  text[] NOT NULL,       -- usernames, creator first
        created_by    text NOT NULL,
        created_at    text NOT NULL,
        updated_at    text NOT NULL,
        last_seq      bigint NOT NULL DEFAULT 0  -- survives delete-all, so seq never goes backwards
    );
    -- pks are taken from this sequence inside the committing transaction; a sequence never hands a value
    -- out twice, not after a rollback nor a delete, so a recovery offset keeps naming the same place.
    CREATE SEQUENCE messages_pk_seq AS bigint;
    CREATE TABLE messages (
        pk            bigint PRIMARY KEY,
        id            text NOT NULL UNIQUE,
        room_id       text NOT NULL,
        seq           bigint NOT NULL,
        sender        text NOT NULL,
        content       text NOT NULL,
        ts_ms         bigint NOT NULL,       -- receive time, for `since`
        timestamp     text NOT NULL,         -- receive time as the clients see it
        created_at    text NOT NULL,         -- commit time
        client_msg_id text
    );
    -- History pages are range scans on this index: O(log n) to find the page, whatever the room size.
    CREATE UNIQUE INDEX messages_room_seq ON messages (room_id, seq);
    -- Idempotent sends: one row per (room, sender, clientMsgId).
    CREATE UNIQUE INDEX messages_client_msg_id ON messages (room_id, sender, client_msg_id)
        WHERE client_msg_id IS NOT NULL;
    CREATE TABLE meta (
        key           text PRIMARY KEY,
        value         bigint NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` under the migration lock; returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        found = 0 if found is None else int(found)
        if found > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"database schema version {found} is newer than this server's {SCHEMA_VERSION}; upgrade the server"
            )
        for script in MIGRATIONS[found:]:
            await conn.execute(script)  # a script of several statements: the simple query protocol runs them all
        if found < SCHEMA_VERSION:
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION)
    return found

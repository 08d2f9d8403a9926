"""SQLite schema and its migrations, versioned with ``PRAGMA user_version``.

Each entry of ``MIGRATIONS`` moves the schema from version *i* to *i + 1*. Never edit a released entry:
append a new one. ``migrate`` applies the missing ones in one transaction at start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from storage.errors import SchemaTooNewError

MIGRATIONS: tuple[str, ...] = (
    # 1: users, rooms (participants as an ordered JSON array), messages.
    """
    CREATE TABLE users (
        pk            INTEGER PRIMARY KEY,   -- insertion order
        id            TEXT NOT NULL UNIQUE,
        username      TEXT NOT NULL UNIQUE,  -- exact, case-sensitive, as the original
        password_hash TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE TABLE rooms (
        pk            INTEGER PRIMARY KEY,   -- creation order, which GET /api/chatrooms keeps
        room_id       TEXT NOT NULL UNIQUE,
        name          TEXT NOT NULL,
        participants  TEXT NOT NULL,         -- JSON array of usernames, creator first
        created_by    TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        last_seq      INTEGER NOT NULL DEFAULT 0  -- survives delete-all, so seq never goes backwards
    );
    CREATE TABLE messages (
        pk            INTEGER PRIMARY KEY,
        id            TEXT NOT NULL UNIQUE,
        room_id       TEXT NOT NULL,
        seq           INTEGER NOT NULL,
        sender        TEXT NOT NULL,
        content       TEXT NOT NULL,
        ts_ms         INTEGER NOT NULL,      -- receive time, for `since`
        timestamp     TEXT NOT NULL,         -- receive time as the clients see it
        created_at    TEXT NOT NULL,         -- commit time
        client_msg_id TEXT
    );
    -- History pages are range scans on this index: O(log n) to find the page, whatever the room size.
    CREATE UNIQUE INDEX messages_room_seq ON messages (room_id, seq);
    -- Idempotent sends: one row per (room, sender, clientMsgId).
    CREATE UNIQUE INDEX messages_client_msg_id ON messages (room_id, sender, client_msg_id)
        WHERE client_msg_id IS NOT NULL;
    """,
    # 2: a small key-value table for the server's own bookkeeping (the fast-mode crash marker).
    """
    CREATE TABLE meta (
        key           TEXT PRIMARY KEY,
        value         INTEGER NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection: committed on success, rolled back on error.

    BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails half-way on a lock upgrade.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (disk full, I/O error) leaves the transaction open; without this rollback
        # every later BEGIN would fail too and storage would never recover by itself.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found before."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"database schema version {found} is newer than this server's {SCHEMA_VERSION}; upgrade the server"
        )
    if found == SCHEMA_VERSION:
        return found
    with transaction(conn):  # a half-migrated database never exists
        for script in MIGRATIONS[found:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found

"""The SQLite storage engine: the async face of :class:`SqliteStore`, run on one dedicated thread.

Errors: SQLite's "for now" failures (``database is locked`` past the busy timeout, ``database or disk is
full``, ``disk I/O error``, a read-only file) arrive as ``sqlite3.OperationalError``, and damage as a plain
``sqlite3.DatabaseError``; both leave as :class:`StorageUnavailableError`. Its subclasses that mean a bug
in our SQL (``IntegrityError``, ``ProgrammingError``, ...) pass through unchanged: they are 500s.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from storage.errors import DatabaseInUseError, StorageClosedError, StorageUnavailableError
from storage.records import (
    Appended,
    HistoryQuery,
    NewMessage,
    RoomRecord,
    StorageChange,
    StoredMessage,
    UserRecord,
)
from storage.sqlite.store import SqliteReader, SqliteStore, Synchronous
from storage.sqlite.worker import WorkerThread

log = logging.getLogger(__name__)

T = TypeVar("T")


def _unavailable(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class SqliteEngine:
    """Implements :class:`storage.engine.StorageEngine` on an embedded SQLite file (WAL mode)."""

    def __init__(self, path: str, *, synchronous: Synchronous = "FULL", busy_timeout: float = 5.0) -> None:
        self.path = path
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._thread = WorkerThread("sqlite-storage")
        self._store: SqliteStore | None = None
        # Reads beside the writer (see SqliteReader); an in-memory database has one connection only.
        self._reader_thread = WorkerThread("sqlite-reader") if path != ":memory:" else None
        self._reader: SqliteReader | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._one_process():
            await self._run(task_status)

    @contextlib.contextmanager
    def _one_process(self) -> Iterator[None]:
        """Hold an exclusive lock on ``<path>.lock`` for as long as the engine runs.

        Why: every process counts each room's seqs in memory, so two servers on one file would hand out the
        same seq (measured: every send through the second failed on the unique (room, seq) index). A rolling
        deploy must wait for the old process, and several processes need PostgreSQL. The kernel drops the
        lock when the process dies, kill -9 included, so a crash never leaves the file locked.
        """
        if self.path == ":memory:":
            yield
            return
        lock_path = Path(f"{self.path}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DatabaseInUseError(
                    f"another process is serving the SQLite database {self.path} (it holds {lock_path}); SQLite"
                    " serves one process: stop that one first, or use PostgreSQL for several"
                ) from None
            yield  # closing the file releases the lock

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._thread.run)
            try:
                self._store = await self._call(
                    partial(SqliteStore, self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
                )
                log.info(
                    "sqlite storage open at %s (schema version %d found)",
                    self.path,
                    self._store.schema_version_found,
                )
                if self._reader_thread is not None:
                    await nursery.start(self._reader_thread.run)
                    self._reader = await self._read(partial(SqliteReader, self.path, busy_timeout=self.busy_timeout))
                if self._store.seq_skipped:
                    log.warning(
                        "the last fast-mode run did not stop cleanly: every room's seq skips %d, so no seq a member"
                        " may have seen is given to another message",
                        self._store.seq_skipped,
                    )
                task_status.started()
                await trio.sleep_forever()
            finally:
                # Shielded: closing must finish even though we are being cancelled. Jobs queued before
                # the close run first, so every accepted write is committed before the file is closed.
                # Then the thread is told to stop, and the nursery waits for it.
                with trio.CancelScope(shield=True):
                    if self._reader is not None and self._reader_thread is not None:
                        reader, self._reader = self._reader, None
                        await self._reader_thread.call(reader.close)
                    if self._store is not None:
                        await self._thread.call(self._store.close)
                        self._store = None
                if self._reader_thread is not None:
                    self._reader_thread.stop()
                self._thread.stop()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._on(self._thread, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._on(self._reader_thread or self._thread, fn, *args)

    @staticmethod
    async def _on(thread: WorkerThread, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await thread.call(fn, *args)
        except sqlite3.Error as exc:
            if _unavailable(exc):
                raise StorageUnavailableError(f"storage unavailable: {exc}") from exc
            raise

    @property
    def _open(self) -> SqliteStore:
        if self._store is None:
            raise StorageClosedError("the sqlite engine is not open; start it with run()")
        return self._store

    async def check_writable(self) -> None:
        await self._call(self._open.check_writable)

    async def insert_users(self, users: Sequence[UserRecord]) -> list[bool]:
        return await self._call(self._open.insert_users, users)

    async def get_users(self, usernames: Sequence[str]) -> dict[str, UserRecord]:
        return await self._call(self._open.get_users, usernames)

    async def delete_all_users(self) -> int:
        return await self._call(self._open.delete_all_users)

    async def load_rooms(self, room_ids: Sequence[str] | None = None) -> list[RoomRecord]:
        return await self._call(self._open.load_rooms, None if room_ids is None else tuple(room_ids))

    async def room_heads(self, room_ids: Sequence[str]) -> dict[str, int]:
        return await self._call(self._open.room_heads, tuple(room_ids))

    async def watch(
        self,
        on_change: Callable[[StorageChange], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One process per file (see ``_one_process``): nobody else changes it, so there is nothing to report."""
        task_status.started()
        await trio.sleep_forever()

    async def insert_rooms(self, rooms: Sequence[RoomRecord]) -> None:
        await self._call(self._open.insert_rooms, rooms)

    async def set_participants(self, room_id: str, participants: Sequence[str], updated_at: str) -> None:
        await self._call(self._open.set_participants, room_id, tuple(participants), updated_at)

    async def change_participants(
        self, room_id: str, add: Sequence[str], remove: str | None, updated_at: str
    ) -> tuple[str, ...] | None:
        return await self._call(self._open.change_participants, room_id, tuple(add), remove, updated_at)

    async def delete_room(self, room_id: str) -> None:
        await self._call(self._open.delete_room, room_id)

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        return await self._call(self._open.append_messages, batch)

    async def begin_fast_run(self, seq_gap: int) -> None:
        await self._call(self._open.begin_fast_run, seq_gap)

    async def end_fast_run(self) -> None:
        await self._call(self._open.end_fast_run)

    async def recent_idempotent_sends(self, limit: int) -> list[StoredMessage]:
        return await self._call(self._open.recent_idempotent_sends, limit)

    async def history(self, query: HistoryQuery) -> list[StoredMessage]:
        if self._reader is not None:
            return await self._read(self._reader.history, query)
        return await self._call(self._open.history, query)

    async def cursors_at(self, room_ids: Sequence[str], pk: int) -> dict[str, int]:
        if self._reader is not None:
            return await self._read(self._reader.cursors_at, tuple(room_ids), pk)
        return await self._call(self._open.cursors_at, tuple(room_ids), pk)

    async def history_after(self, cursors: Mapping[str, int], limit: int) -> dict[str, list[StoredMessage]]:
        if self._reader is not None:
            return await self._read(self._reader.history_after, dict(cursors), limit)
        return await self._call(self._open.history_after, dict(cursors), limit)

    async def log_head(self) -> int:
        return await self._call(self._open.log_head)

    async def delete_all_messages(self) -> tuple[int, int]:
        return await self._call(self._open.delete_all_messages)

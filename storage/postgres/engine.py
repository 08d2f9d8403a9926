"""The PostgreSQL storage engine: asyncpg, driven from Trio through trio-asyncio.

Theory of operation. asyncpg is asyncio-only and there is no maintained Trio port, so ``run`` opens one
asyncio loop inside the Trio run (``trio_asyncio.open_loop``), owned by the engine's nursery; every database
call crosses to it with ``aio_as_trio``, one crossing per job (a job may send many statements).

- **One writer.** Every write is a job on a FIFO (``_submit``: queued synchronously, so submission order is
  call order even across tasks, as the engine contract asks) that one task runs on one dedicated
  connection, one job at a time. Group commit never waits behind a read, and writes reach the database in
  the order memory changed.
- **A pool for reads.** History, catch-up cursors, logins and the start-up loads use a small asyncpg pool
  beside the writer; each read is its own statement, so it sees every commit finished before it started.
- **Failures.** A lost or refused connection, a server shutting down or starting, too many connections,
  a full disk, a timeout: :class:`StorageUnavailableError` (the caller may retry; the writer reconnects on
  its next job, the pool on its next acquire). Anything else a statement raises passes through: a bug.
- **Shutdown.** When ``run`` is cancelled the writer finishes every job queued before (shielded: the batcher
  queues its final flush before the engine stops), then the pool and the writer are closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import asyncpg
import msgspec
import outcome
import trio
import trio_asyncio

from storage.errors import StorageClosedError, StorageError, StorageUnavailableError
from storage.pending import Pending
from storage.postgres import store
from storage.postgres.schema import migrate
from storage.records import (
    Appended,
    HistoryQuery,
    LogAdvanced,
    NewMessage,
    Resync,
    RoomRecord,
    RoomsChanged,
    StorageChange,
    StoredMessage,
    UserRecord,
)
from storage.urls import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

# The driver's and the server's "not now" conditions (see the module docstring). Classes, not messages:
# asyncpg maps every SQLSTATE to a class, so this is the documented meaning, not a guess from text.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect_timeout, command_timeout (asyncio.TimeoutError is TimeoutError since 3.11)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, the connection is gone
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress" after a loss
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53: disk full, out of memory, too many connections
    asyncpg.exceptions.PostgresSystemError,  # 58: I/O error
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock, serialization failure: retry as it is
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby after failover: the primary is elsewhere
)

# Plan every statement with its parameters. asyncpg prepares statements, and after five runs PostgreSQL may
# switch to a generic plan chosen while the tables were nearly empty: measured on the quick preset, the
# stored-rows lookup of group commit went from 0.4 ms to 64-148 ms (a sequential scan) as the log grew, and
# commits from 6 to 60 ms. Planning these small statements costs well under a millisecond.
#
# A process cut off from the network mid-commit (no FIN, no RST) would hold the log lock, and every commit in
# the cluster would wait for it, for as long as PostgreSQL takes to notice (TCP keepalive: two hours by
# default): keepalives find a silent peer in ~25 s. Not set here: idle_in_transaction_session_timeout, which
# would also free the lock of a *frozen* process (SIGSTOP; its kernel still answers keepalives), because it
# arms a timer at every pause inside a transaction: measured 25-30 % slower commits on the 2-process bench
# (group commit pauses five times per transaction); an operator may set it on the database role.
SESSION_SETTINGS = {
    "plan_cache_mode": "force_custom_plan",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}

# How often the listener's connection is checked when nothing is heard.
WATCH_CHECK_S = 1.0


class _Notice(msgspec.Struct, frozen=True):
    o: str
    r: dict[str, int] | None = None
    rooms: list[str] | None = None
    resync: bool = False


_notice_decoder = msgspec.json.Decoder(_Notice)

_Job = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], Pending[Any]]


def unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE) and not isinstance(exc, StorageError)


class PostgresEngine:
    """Implements :class:`storage.engine.StorageEngine` on PostgreSQL (see the module docstring)."""

    def __init__(
        self, dsn: str, *, pool_size: int = 4, connect_timeout: float = 5.0, command_timeout: float = 30.0
    ) -> None:
        self.dsn = dsn
        self.url = redact(dsn)  # for every message a person may read
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._jobs_in, self._jobs_out = trio.open_memory_channel[_Job](math.inf)  # bounded by the batcher's slots
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._accepting = False
        # Names this process in its NOTIFY payloads, so it can skip its own.
        self.origin = secrets.token_hex(8)
        self._loop: Any = None  # trio_asyncio's loop while run() is active

    # -- lifetime ------------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio_asyncio.open_loop() as loop:
            # Named on every call: the loop is found through a context variable, which tasks started
            # elsewhere (every caller of this engine) do not inherit.
            self._loop = loop
            loop.set_exception_handler(_asyncio_error)
            try:
                found, skipped = await self._aio(self._open)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self._aio(self._close)
                if unavailable(exc):
                    raise StorageUnavailableError(f"cannot open PostgreSQL at {self.url}: {_reason(exc)}") from exc
                raise
            log.info("postgresql storage open at %s (schema version %d found)", self.url, found)
            if skipped:
                log.warning(
                    "the last fast-mode run did not stop cleanly: every room's seq skips %d, so no seq a member"
                    " may have seen is given to another message",
                    skipped,
                )
            self._accepting = True
            try:
                task_status.started()
                async for job in self._jobs_out:
                    await self._run_job(job)
            finally:
                with trio.CancelScope(shield=True):
                    # Every job queued before this point runs: the batcher's last flush among them.
                    self._accepting = False
                    while True:
                        try:
                            job = self._jobs_out.receive_nowait()
                        except trio.WouldBlock:
                            break
                        await self._run_job(job)
                    await self._aio(self._close)

    async def _open(self) -> tuple[int, int]:
        """On asyncio's side: the writer connection, the schema, the fast-run marker, the read pool."""
        writer = await self._connect()
        found = await migrate(writer)
        skipped = await store.skip_seqs_after_unclean_fast_run(writer)
        await store.prepare_writer(writer)
        self._writer = writer
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            server_settings=SESSION_SETTINGS,
        )
        return found, skipped

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            server_settings=SESSION_SETTINGS,
        )

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        writer, self._writer = self._writer, None
        for closing in (pool, writer):
            if closing is not None:
                try:
                    await asyncio.wait_for(closing.close(), self.connect_timeout)
                except Exception:
                    closing.terminate()

    async def _aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._loop is None:
            raise StorageClosedError("the postgresql engine is not open; start it with run()")
        result: T = await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args)
        return result

    # -- the writer --------------------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Pending[T]:
        """Queue a write job now (synchronously: call order is database order)."""
        if not self._accepting:
            raise StorageClosedError("the postgresql engine is not open; start it with run()")
        pending: Pending[T] = Pending()
        self._jobs_in.send_nowait((fn, args, pending))
        return pending

    async def _write(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._submit(fn, *args).wait()

    async def _run_job(self, job: _Job) -> None:
        fn, args, pending = job
        # Shielded: a job that started must finish (its transaction commits or rolls back on its own); a
        # cancelled wait would leave the caller not knowing whether it was stored.
        with trio.CancelScope(shield=True):
            result = await outcome.acapture(self._aio, self._on_writer, fn, *args)
        if isinstance(result, outcome.Error):
            writer = self._writer
            if unavailable(result.error) or (writer is not None and writer.is_in_transaction()):
                # Reconnect on the next job; a connection left inside a transaction would hold the log lock.
                await self._aio(self._drop_writer)
            if unavailable(result.error):
                result = outcome.Error(_unavailable_error(result.error))
        pending._finish(result)

    async def _on_writer(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._writer is None or self._writer.is_closed():
            writer = await self._connect()
            await store.prepare_writer(writer)
            self._writer = writer
        return await fn(self._writer, *args)

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and not writer.is_closed():
            writer.terminate()

    # -- reads -------------------------------------------------------------------------------------------
    async def _read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if not self._accepting:
            raise StorageClosedError("the postgresql engine is not open; start it with run()")
        try:
            return await self._aio(self._on_pool, fn, *args)
        except BaseException as exc:
            if unavailable(exc):
                raise _unavailable_error(exc) from exc
            raise

    async def _on_pool(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        pool = self._pool
        if pool is None:
            raise StorageClosedError("the postgresql engine is not open; start it with run()")
        async with pool.acquire(timeout=self.connect_timeout) as conn:
            return await fn(conn, *args)

    # -- the engine interface ----------------------------------------------------------------------------
    async def check_writable(self) -> None:
        await self._write(store.check_writable)

    async def insert_users(self, users: Sequence[UserRecord]) -> list[bool]:
        return await self._write(store.insert_users, tuple(users))

    async def get_users(self, usernames: Sequence[str]) -> dict[str, UserRecord]:
        return await self._read(store.get_users, tuple(usernames))

    async def delete_all_users(self) -> int:
        return await self._write(store.delete_all_users)

    async def load_rooms(self, room_ids: Sequence[str] | None = None) -> list[RoomRecord]:
        # On the writer: after every write queued before it, as SQLite's engine does.
        return await self._write(store.load_rooms, None if room_ids is None else list(room_ids))

    async def room_heads(self, room_ids: Sequence[str]) -> dict[str, int]:
        return await self._read(store.room_heads, tuple(room_ids))

    async def insert_rooms(self, rooms: Sequence[RoomRecord]) -> None:
        await self._write(store.insert_rooms, tuple(rooms), self.origin)

    async def set_participants(self, room_id: str, participants: Sequence[str], updated_at: str) -> None:
        await self._write(store.set_participants, room_id, tuple(participants), updated_at, self.origin)

    async def change_participants(
        self, room_id: str, add: Sequence[str], remove: str | None, updated_at: str
    ) -> tuple[str, ...] | None:
        return await self._write(store.change_participants, room_id, tuple(add), remove, updated_at, self.origin)

    async def delete_room(self, room_id: str) -> None:
        await self._write(store.delete_room, room_id, self.origin)

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        return await self._write(store.append_messages, tuple(batch), self.origin)

    # -- what the other processes change -----------------------------------------------------------------
    async def watch(
        self,
        on_change: Callable[[StorageChange], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """LISTEN on one connection of its own; see :meth:`storage.engine.StorageEngine.watch`.

        A lost connection is noticed within ``WATCH_CHECK_S`` (asyncpg says ``is_closed``), reconnected with
        backoff, and followed by :class:`Resync`: a missed wake-up costs latency, never a message.
        """
        notices_in, notices_out = trio.open_memory_channel[str](math.inf)

        def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            # Called by asyncpg on the asyncio loop, which trio-asyncio runs in this thread: a plain hand-over.
            notices_in.send_nowait(str(payload))

        task_status.started()
        delay = 0.0
        while True:
            await trio.sleep(delay)
            try:
                listener = await self._aio(self._listen, heard)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                delay = min(max(delay * 2, 0.1), 2.0)
                log.warning("cannot listen for other processes' changes (%s); retrying", _reason(exc))
                continue
            delay = 0.0
            on_change(Resync())  # whatever happened while nobody listened
            try:
                while not listener.is_closed():
                    with trio.move_on_after(WATCH_CHECK_S) as quiet:
                        payload = await notices_out.receive()
                        if (change := self._change(payload)) is not None:
                            on_change(change)
                    if quiet.cancelled_caught and not await self._alive(listener):
                        break
                log.warning("the connection listening for other processes' changes was lost; reconnecting")
            finally:
                with trio.CancelScope(shield=True):
                    await self._aio(self._drop, listener)

    async def _listen(self, heard: Callable[[Any, int, str, object], None]) -> asyncpg.Connection:
        listener = await self._connect()
        await listener.add_listener(store.CHANNEL, heard)
        return listener

    async def _alive(self, listener: asyncpg.Connection) -> bool:
        """Nothing heard for a while: is the listener's peer still there? (A silent network drop closes
        nothing, so ``is_closed`` alone would wait forever.)"""
        try:
            await self._aio(partial(listener.fetchval, "SELECT 1", timeout=self.connect_timeout))
        except Exception as exc:
            if not unavailable(exc):
                raise
            return False
        return True

    @staticmethod
    async def _drop(listener: asyncpg.Connection) -> None:
        if not listener.is_closed():
            listener.terminate()

    def _change(self, payload: str) -> StorageChange | None:
        """The change a NOTIFY payload describes; None for our own and for empty ones."""
        try:
            notice = _notice_decoder.decode(payload)
        except msgspec.DecodeError:
            return None if not payload else Resync()
        if notice.rooms:
            # Our own too: a reload that read the rows before our write committed may have put an older state
            # back in memory; this one reads after the commit, so memory ends where the database is.
            return RoomsChanged(tuple(notice.rooms))
        if notice.o == self.origin:
            return None  # our own commit: memory already has its messages
        if notice.resync:
            return Resync()
        if notice.r:
            return LogAdvanced(notice.r)
        return None

    async def history(self, query: HistoryQuery) -> list[StoredMessage]:
        return await self._read(store.history, query)

    async def cursors_at(self, room_ids: Sequence[str], pk: int) -> dict[str, int]:
        return await self._read(store.cursors_at, tuple(room_ids), pk)

    async def history_after(self, cursors: Mapping[str, int], limit: int) -> dict[str, list[StoredMessage]]:
        return await self._read(store.history_after, dict(cursors), limit)

    async def log_head(self) -> int:
        return await self._write(store.log_head)

    async def recent_idempotent_sends(self, limit: int) -> list[StoredMessage]:
        return await self._read(store.recent_idempotent_sends, limit)

    async def begin_fast_run(self, seq_gap: int) -> None:
        await self._write(store.begin_fast_run, seq_gap)

    async def end_fast_run(self) -> None:
        await self._write(store.end_fast_run)

    async def delete_all_messages(self) -> tuple[int, int]:
        return await self._write(store.delete_all_messages)


def _asyncio_error(_loop: object, context: dict[str, Any]) -> None:
    """asyncio's "nobody looked at this error" (a connection dropped under a pending future, say), logged.

    trio-asyncio's default handler raises such errors into its loop's nursery, which would end the engine and
    the process for a connection this engine has already given up on; the calls that failed have raised on
    their own.
    """
    exception = context.get("exception")
    log.warning("asyncio: %s%s", context.get("message", "unhandled error"), f" ({exception!r})" if exception else "")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unavailable_error(exc: BaseException) -> StorageUnavailableError:
    error = StorageUnavailableError(f"storage unavailable: {_reason(exc)}")
    error.__cause__ = exc
    return error

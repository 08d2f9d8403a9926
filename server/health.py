"""Readiness: the one owner of "should this server get traffic now?", and the storage proxy that feeds it.

``/health`` is liveness (the process answers: always 200); ``/ready`` is readiness and asks :class:`Health`.
A server is not ready while storage is failing or while it shuts down. Who reports what:

* REST storage calls go through :class:`ReportingStorage`: a :class:`StorageUnavailableError` marks storage
  failed, and a later write that succeeds marks it recovered, so the service resumes by itself;
* ``/ready`` itself, while storage is marked failed, asks the engine whether a write would go through
  (``check_writable``): a server that a load balancer has stopped sending to still notices recovery;
* the message batcher may report too (commit failures after its retries, and the next good commit):
  call ``storage_failed(reason)`` / ``storage_recovered()`` exactly as REST does. Reports are idempotent
  and the latest wins, so any number of reporters can share one ``Health``;
* ``MinitalkServer.request_shutdown`` calls ``shutting_down()``, which is final.

Everything here runs on the Trio loop (no locks): reporters are tasks of the same ``trio.run``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import trio

from storage.engine import StorageEngine
from storage.errors import StorageUnavailableError
from storage.records import (
    Appended,
    HistoryQuery,
    NewMessage,
    RoomRecord,
    StorageChange,
    StoredMessage,
    UserRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class Health:
    """Readiness state: ``ready`` is True unless storage is failing or the server is shutting down."""

    def __init__(self) -> None:
        self._storage_problem: str | None = None
        # Set by shutting_down(), for good; a long-lived response (the dashboard's stream) waits on it to end.
        self.stopping = trio.Event()

    @property
    def ready(self) -> bool:
        return self._storage_problem is None and not self.stopping.is_set()

    @property
    def reason(self) -> str:
        """Why the server is not ready ("" when it is): the text ``/ready`` answers with."""
        if self.stopping.is_set():
            return "MiniTalk Backend is shutting down"
        if self._storage_problem is not None:
            return f"Storage is failing: {self._storage_problem}"
        return ""

    @property
    def storage_failing(self) -> bool:
        return self._storage_problem is not None

    def storage_failed(self, reason: str) -> None:
        """A storage call failed in a way that may pass (locked, disk full, I/O): not ready until it does."""
        if self._storage_problem is None:
            log.warning("storage failing, /ready now answers 503: %s", reason)
        self._storage_problem = reason

    def storage_recovered(self) -> None:
        """A storage call succeeded after a failure: ready again (unless shutting down)."""
        if self._storage_problem is not None:
            log.warning("storage recovered, /ready answers 200 again (was: %s)", self._storage_problem)
            self._storage_problem = None

    def shutting_down(self) -> None:
        """The server stops taking new work; final: readiness never comes back in this process."""
        self.stopping.set()


class ReportingStorage:
    """A :class:`StorageEngine` that reports each call's outcome to :class:`Health`, then behaves as ``inner``.

    Only :class:`StorageUnavailableError` counts as a failure; a write (or ``check_writable``) that succeeds
    while storage is marked failed recovers it, a read does not. The service runs ``inner`` itself;
    ``run`` is delegated only so that this is a complete engine.
    """

    def __init__(self, inner: StorageEngine, health: Health) -> None:
        self.inner = inner
        self.health = health

    async def _report(self, call: Awaitable[T], *, write: bool = True) -> T:
        try:
            result = await call
        except StorageUnavailableError as exc:
            self.health.storage_failed(str(exc))
            raise
        # Only a write proves recovery: in WAL mode reads go on while another process holds the write lock.
        if write and self.health.storage_failing:
            self.health.storage_recovered()
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.run(task_status=task_status)

    async def check_writable(self) -> None:
        await self._report(self.inner.check_writable())

    async def insert_users(self, users: Sequence[UserRecord]) -> list[bool]:
        return await self._report(self.inner.insert_users(users))

    async def get_users(self, usernames: Sequence[str]) -> dict[str, UserRecord]:
        return await self._report(self.inner.get_users(usernames), write=False)

    async def delete_all_users(self) -> int:
        return await self._report(self.inner.delete_all_users())

    async def load_rooms(self, room_ids: Sequence[str] | None = None) -> list[RoomRecord]:
        return await self._report(self.inner.load_rooms(room_ids), write=False)

    async def room_heads(self, room_ids: Sequence[str]) -> dict[str, int]:
        return await self._report(self.inner.room_heads(room_ids), write=False)

    async def watch(
        self,
        on_change: Callable[[StorageChange], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.inner.watch(on_change, task_status=task_status)

    async def insert_rooms(self, rooms: Sequence[RoomRecord]) -> None:
        await self._report(self.inner.insert_rooms(rooms))

    async def set_participants(self, room_id: str, participants: Sequence[str], updated_at: str) -> None:
        await self._report(self.inner.set_participants(room_id, participants, updated_at))

    async def change_participants(
        self, room_id: str, add: Sequence[str], remove: str | None, updated_at: str
    ) -> tuple[str, ...] | None:
        return await self._report(self.inner.change_participants(room_id, add, remove, updated_at))

    async def delete_room(self, room_id: str) -> None:
        await self._report(self.inner.delete_room(room_id))

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        return await self._report(self.inner.append_messages(batch))

    async def history(self, query: HistoryQuery) -> list[StoredMessage]:
        return await self._report(self.inner.history(query), write=False)

    async def delete_all_messages(self) -> tuple[int, int]:
        return await self._report(self.inner.delete_all_messages())

    async def recent_idempotent_sends(self, limit: int) -> list[StoredMessage]:
        return await self._report(self.inner.recent_idempotent_sends(limit), write=False)

    async def begin_fast_run(self, seq_gap: int) -> None:
        await self._report(self.inner.begin_fast_run(seq_gap))

    async def end_fast_run(self) -> None:
        await self._report(self.inner.end_fast_run())

    async def history_after(self, cursors: Mapping[str, int], limit: int) -> dict[str, list[StoredMessage]]:
        return await self._report(self.inner.history_after(cursors, limit), write=False)

    async def cursors_at(self, room_ids: Sequence[str], pk: int) -> dict[str, int]:
        return await self._report(self.inner.cursors_at(room_ids, pk), write=False)

    async def log_head(self) -> int:
        return await self._report(self.inner.log_head(), write=False)

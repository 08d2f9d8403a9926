"""The storage engine interface: everything the server asks of persistence, and nothing more.

An engine is a service: ``run`` opens it (schema created or migrated), reports ready through
``task_status``, and keeps it open until cancelled; on the way out it finishes the work it accepted.
Every other method may be called only while ``run`` is active.

Failures: a call the database refuses for now (another writer holds the lock past the busy timeout, the
disk is full, an I/O error) raises :class:`~storage.errors.StorageUnavailableError` and changes nothing;
the caller may retry. Engines never let their driver's exceptions escape for such conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from storage.records import Appended, HistoryQuery, NewMessage, RoomRecord, StoredMessage, UserRecord


class StorageEngine(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    async def check_writable(self) -> None:
        """Return if a write could be committed now; else raise StorageUnavailableError. Writes nothing.

        The readiness probe calls it while a storage failure is reported, so a server that no traffic
        reaches (a load balancer stops sending to a not-ready one) still notices that storage is back.
        """
        ...

    # Users
    async def insert_users(self, users: Sequence[UserRecord]) -> list[bool]:
        """Insert users in order; each flag is False when that username already existed."""
        ...

    async def get_users(self, usernames: Sequence[str]) -> dict[str, UserRecord]:
        """The stored users among ``usernames``, by name (exact, case-sensitive)."""
        ...

    async def delete_all_users(self) -> int: ...

    # Rooms and membership
    async def load_rooms(self) -> list[RoomRecord]:
        """Every room, in creation order: the room registry is built from this at start."""
        ...

    async def insert_rooms(self, rooms: Sequence[RoomRecord]) -> None: ...

    async def set_participants(self, room_id: str, participants: Sequence[str], updated_at: str) -> None: ...

    async def delete_room(self, room_id: str) -> None:
        """Delete a room and all of its messages."""
        ...

    # Messages
    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        """Store a batch in one transaction (group commit), assigning each room's next ``seq``."""
        ...

    async def history(self, query: HistoryQuery) -> list[StoredMessage]: ...

    async def delete_all_messages(self) -> tuple[int, int]:
        """Delete every message; returns (messages deleted, rooms that had messages)."""
        ...

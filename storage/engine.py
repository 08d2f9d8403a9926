"""The storage engine interface: everything the server asks of persistence, and nothing more.

An engine is a service: ``run`` opens it (schema created or migrated), reports ready through
``task_status``, and keeps it open until cancelled; on the way out it finishes the work it accepted.
Every other method may be called only while ``run`` is active.

The contract every engine keeps (the rest of the server relies on each line):

- **Order.** Writes are applied in the order their calls were made on the event loop, even when calls come
  from many tasks: the room registry changes memory and submits the write with no await in between, so the
  database sees mutations in memory's order. (SQLite: one writer thread fed by a FIFO; PostgreSQL: one writer
  connection fed by a FIFO, reads on a pool beside it. A pool for writes would break this order.) A write
  is queued before its call's first await: the batcher hands batch N+1 over and then settles batch N, relying
  on N+1 being queued by then (storage/batcher.py, ``_pipeline``).
- **Reads beside writes.** ``history``, ``cursors_at`` and the other reads may run beside a commit and never
  wait for its fsync; each read sees every commit that finished before it started.
- **Seq.** ``append_messages`` gives each room's messages ``seq`` = the room's last + 1 in batch order, inside
  the commit (durable mode), or stores the ``seq`` a message carries (fast mode); the room's last seq moves
  past every seq it was given, stored or a repeat's, and never goes back (not after a delete either).
- **pk.** Every stored message gets a ``pk`` from one counter for the whole log, in commit order, never
  reused: recovery offsets name places in the log by pk.
- **Idempotency.** ``(room, sender, clientMsgId)`` is stored at most once; a repeat in the same or a later
  batch comes back as the stored row with ``duplicate`` set and writes nothing.
- **Atomic batches.** ``append_messages`` stores the whole batch in one transaction or nothing. A failed call
  leaves counters as they were, so the same batch may be retried as it is (the batcher does).
- **Retries never duplicate.** A call can fail after its commit reached the database (PostgreSQL: the
  connection lost before the answer arrived). Retried, the batch finds its messages by ``id`` and returns the
  stored rows as they are (not ``duplicate``: they were never answered), storing nothing twice.
- **Failures.** A call the database refuses for now (another writer holds the lock past the busy timeout, the
  disk is full, an I/O error; the server restarting or unreachable, the connection lost, a timeout) raises
  :class:`~storage.errors.StorageUnavailableError` and changes nothing:
  the caller may retry. Any other failure is a :class:`~storage.errors.StorageError` or a bug. Engines never
  let their driver's exceptions escape for such conditions.
- **Text.** Engines are never given U+0000 in any text (the server refuses it at the edge: PostgreSQL's text
  cannot hold it); everything else is stored exactly as given.
- **Several processes.** An engine either serves one process (SQLite: a second one is refused at start)
  or lets several share the log (PostgreSQL): then seqs are assigned in the committing transaction, pks are
  given in commit order across all of them, and ``watch`` tells each process what the others changed.
- **Fast-run marker.** Between ``begin_fast_run(gap)`` and ``end_fast_run``, an engine that is opened again
  (after a crash) first moves every room's counter ``gap`` seqs ahead, so no seq a member saw is reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import trio

from storage.records import (
    Appended,
    HistoryQuery,
    NewMessage,
    RoomRecord,
    StorageChange,
    StoredMessage,
    UserRecord,
)


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
    async def load_rooms(self, room_ids: Sequence[str] | None = None) -> list[RoomRecord]:
        """Every room (or those of ``room_ids`` that exist), in creation order: the room registry is built
        from this at start, and re-reads changed rooms from it."""
        ...

    async def room_heads(self, room_ids: Sequence[str]) -> dict[str, int]:
        """Each existing room's last seq as stored now (a cluster member compares its memory with it)."""
        ...

    async def watch(
        self,
        on_change: Callable[[StorageChange], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_change`` for every change another process makes (commits, rooms), until cancelled.

        An engine shared by several processes (PostgreSQL) listens for them; after every (re)connect of its
        listener it reports :class:`Resync`, since changes in between were not seen. An engine that serves
        one process (SQLite) never calls it.
        """
        ...

    async def insert_rooms(self, rooms: Sequence[RoomRecord]) -> None: ...

    async def set_participants(self, room_id: str, participants: Sequence[str], updated_at: str) -> None: ...

    async def change_participants(
        self, room_id: str, add: Sequence[str], remove: str | None, updated_at: str
    ) -> tuple[str, ...] | None:
        """Change the *stored* participant list in one transaction: append the names of ``add`` not in it yet,
        drop ``remove``; a room left empty is deleted with its messages. Returns the list as stored now (``()``:
        deleted), None when the room does not exist. Relative, so two processes changing one room at once both
        count (a whole list computed from one process's memory would undo the other's change)."""
        ...

    async def delete_room(self, room_id: str) -> None:
        """Delete a room and all of its messages."""
        ...

    # Messages
    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        """Store a batch in one transaction (group commit), assigning each room's next ``seq`` to messages
        that carry none and storing the given seq of those that do (fast mode). A failed call stored nothing
        and may be retried with the same batch. A message whose (room, sender, clientMsgId) is stored already
        comes back as that row with ``duplicate`` set; the room counter still moves past its given seq."""
        ...

    async def history(self, query: HistoryQuery) -> list[StoredMessage]: ...

    async def history_after(self, cursors: Mapping[str, int], limit: int) -> dict[str, list[StoredMessage]]:
        """For each room, the oldest ``limit`` messages after its cursor, ascending (rooms without any are
        left out): what several rooms' new messages are, in one read (a cluster member after a NOTIFY)."""
        ...

    async def cursors_at(self, room_ids: Sequence[str], pk: int) -> dict[str, int]:
        """Each room's last seq among its messages with ``pk`` at most the given one (0 where none is)."""
        ...

    async def log_head(self) -> int:
        """The highest pk any message was ever given (0 for an empty log): where a new client stands."""
        ...

    async def recent_idempotent_sends(self, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages stored with a clientMsgId, oldest first (fast mode's window at start)."""
        ...

    # Fast mode hands out seqs before their messages are stored (the hub owns the counters then).
    async def begin_fast_run(self, seq_gap: int) -> None:
        """Durably note that up to ``seq_gap`` seqs per room may be in use and not stored. Until
        ``end_fast_run``, a crash makes the next open skip every room's counter by ``seq_gap``, so a seq is
        never given to two messages."""
        ...

    async def end_fast_run(self) -> None:
        """Every seq handed out is stored: clear the note of ``begin_fast_run``."""
        ...

    async def delete_all_messages(self) -> tuple[int, int]:
        """Delete every message; returns (messages deleted, rooms that had messages)."""
        ...

"""Cluster membership: what the other processes on the same PostgreSQL log changed reaches this one.

Theory of operation. Every process commits to the one log; each group commit sends one NOTIFY listing its
rooms' new last seqs, each room change one listing the rooms (``storage/postgres/store.py``). This service
runs the engine's ``watch`` and applies what it hears:

- **Messages.** A room's head moves to the stored last seq (the registry owns heads); the local members who
  are not there switch to catch-up and read ``seq > cursor`` from the log, in seq order, through the
  catch-up reader of the slow-readers design (``server/delivery.py``), one read per room and cursor per
  pass. This process's own batches still go out from memory.
- **Rooms.** Created, invited, left or deleted elsewhere: the rooms are read again and the registry made to
  agree, so every REST route answers the same whichever process serves it.
- **Missed wake-ups** cost latency, never a message: after every (re)connect of the listener the engine
  reports ``Resync`` (every room read again), and every ``check_interval`` seconds the heads of the rooms
  with local members are compared with storage.

Changes are applied by one task, in the order heard (PostgreSQL delivers notifications in commit order).
"""

from __future__ import annotations

import logging
import math

import trio

from server.delivery import Delivery
from server.rooms import RoomRegistry
from storage.engine import StorageEngine
from storage.errors import StorageError
from storage.records import LogAdvanced, Resync, RoomsChanged, StorageChange

log = logging.getLogger(__name__)


class ClusterFollower:
    def __init__(
        self, storage: StorageEngine, registry: RoomRegistry, delivery: Delivery, *, check_interval: float
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._delivery = delivery
        self._check_interval = check_interval
        self._changes_in, self._changes_out = trio.open_memory_channel[StorageChange](math.inf)
        self.remote_commits = 0
        self.resyncs = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._storage.watch, self._changes_in.send_nowait)
            nursery.start_soon(self._apply_changes)
            nursery.start_soon(self._check_heads)
            task_status.started()

    def heads_moved(self, heads: dict[str, int]) -> None:
        """Rooms' stored heads (seen by a watch or a check): advance memory, and catch the members up."""
        for room_id, seq in heads.items():
            if seq > self._registry.head(room_id):
                self._registry.committed_seq(room_id, seq)
                self._delivery.behind(room_id)

    async def _apply_changes(self) -> None:
        async for change in self._changes_out:
            try:
                if isinstance(change, LogAdvanced):
                    self.remote_commits += 1
                    self.heads_moved(change.heads)
                elif isinstance(change, RoomsChanged):
                    await self._reload(list(change.room_ids))
                else:
                    assert isinstance(change, Resync)
                    self.resyncs += 1
                    await self._reload(None)
            except StorageError as exc:
                # Storage is failing (the batcher and /ready say so too): the next check compares again.
                log.warning("could not apply a change made by another process (%s); the next check will", exc)

    async def _reload(self, room_ids: list[str] | None) -> None:
        records = await self._storage.load_rooms(room_ids)
        for room_id in self._registry.apply_stored(records, room_ids):
            self._delivery.behind(room_id)

    async def _check_heads(self) -> None:
        while True:
            await trio.sleep(self._check_interval)
            rooms = self._delivery.subscribed_rooms()
            if not rooms:
                continue
            try:
                heads = await self._storage.room_heads(rooms)
            except StorageError as exc:
                log.debug("head check skipped: %s", exc)
                continue
            self.heads_moved(heads)

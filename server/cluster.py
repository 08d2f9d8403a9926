"""Cluster membership: what the other processes on the same PostgreSQL log changed reaches this one.

Theory of operation. Every process commits to the one log; each group commit sends one NOTIFY listing its
rooms' new last seqs, each room change one listing the rooms (``storage/postgres/store.py``). This service
runs the engine's ``watch`` and applies what it hears:

- **Messages.** For the rooms with local members, the new messages are read once (one statement for every
  room waiting) and pushed live to the members standing right before them, encoded once, as a local commit is;
  then the room's head moves (the registry owns heads). A member elsewhere (slow, or past a local commit
  that overtook the read) catches up from the log through the catch-up reader of the slow-readers design
  (``server/delivery.py``). This process's own batches still go out from memory.
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

from server.delivery import Delivery, stored_packet
from server.rooms import RoomRegistry
from storage.engine import StorageEngine
from storage.errors import StorageError
from storage.records import LogAdvanced, Resync, RoomsChanged, StorageChange, StoredMessage

log = logging.getLogger(__name__)

RETRY_S = 0.5  # after a failed read of another process's change: storage is failing, and will be retried


class ClusterFollower:
    def __init__(
        self,
        storage: StorageEngine,
        registry: RoomRegistry,
        delivery: Delivery,
        *,
        check_interval: float,
        page: int = 500,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._delivery = delivery
        self._check_interval = check_interval
        self._changes_in, self._changes_out = trio.open_memory_channel[StorageChange](math.inf)
        self._page = page
        self._wanted: dict[str, int] = {}  # room → the highest stored seq heard of and not fetched yet
        self._fetch_wake = trio.Event()
        self.remote_commits = 0
        self.fetched_messages = 0
        self.resyncs = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._storage.watch, self._changes_in.send_nowait)
            nursery.start_soon(self._fetch_loop)
            nursery.start_soon(self._apply_changes)
            nursery.start_soon(self._check_heads)
            task_status.started()

    def heads_moved(self, heads: dict[str, int]) -> None:
        """Rooms' stored heads (seen by a watch or a check): rooms with local members have their new messages
        fetched and pushed live; a room nobody here is in only has its head moved."""
        for room_id, seq in heads.items():
            if self._registry.get(room_id) is None:
                continue  # not known here (yet): its RoomsChanged reload brings it with its head
            if seq <= self._registry.head(room_id):
                continue
            if not self._delivery.has_members(room_id):
                self._registry.committed_seq(room_id, seq)
                continue
            self._wanted[room_id] = max(seq, self._wanted.get(room_id, 0))
            self._fetch_wake.set()

    async def _fetch_loop(self) -> None:
        """Read every waiting room's new messages in one statement and push each room's to every local member
        standing right before them (encoded once, as a local commit is). One task, so a room's pushes stay in
        order; a member elsewhere (lagging, or past a local commit that overtook the read) catches up from the
        log through the catch-up reader."""
        while True:
            await self._fetch_wake.wait()
            self._fetch_wake = trio.Event()
            while self._wanted:
                wanted, self._wanted = self._wanted, {}
                afters = {room: self._registry.head(room) for room in wanted if self._registry.get(room) is not None}
                afters = {room: after for room, after in afters.items() if wanted[room] > after}
                if not afters:
                    continue
                try:
                    pages = await self._storage.history_after(afters, self._page)
                except StorageError as exc:
                    log.warning("could not read other processes' new messages (%s); their members catch up", exc)
                    pages = {}
                for room_id, after in afters.items():
                    self._deliver(room_id, after, wanted[room_id], pages.get(room_id, []))

    def _deliver(self, room_id: str, after: int, target: int, rows: list[StoredMessage]) -> None:
        packets: list[bytes] = []
        for row in rows:
            if row.seq != after + len(packets) + 1:
                break  # a gap: the members catch up from the log past it
            packets.append(stored_packet(row))
        if packets and self._registry.head(room_id) == after:
            self.fetched_messages += len(packets)
            self._delivery.publish_fetched(room_id, packets, after + 1)
            self._registry.committed_seq(room_id, after + len(packets))
            if after + len(packets) < target:  # more than a page: the next round reads on
                self._wanted[room_id] = max(target, self._wanted.get(room_id, 0))
            return
        # Nothing usable, or a local commit overtook the read: move the head; whoever is behind reads the log.
        self._registry.committed_seq(room_id, target)
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
                # Storage is failing (the batcher and /ready say so too): try the same change again shortly.
                log.warning("could not apply a change made by another process (%s); retrying", exc)
                await trio.sleep(RETRY_S)
                self._changes_in.send_nowait(change)

    async def refresh(self, room_id: str) -> None:
        """Read one room again now: a request that names a room this process does not know (yet), or a member
        it does not list (yet), may be one NOTIFY ahead of it (created or invited through another process)."""
        await self._reload([room_id])

    async def _reload(self, room_ids: list[str] | None) -> None:
        records = await self._storage.load_rooms(room_ids)
        moved = self._registry.apply_stored(records, room_ids)
        for room_id in moved:
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

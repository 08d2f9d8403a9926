"""The room registry: every room and its membership, in memory, written through to storage.

Why in memory: a ``send_message`` must check membership without a database read (it is the hot path),
and the realtime hub joins sockets to their rooms at connect time from here.

Ordering: each mutation changes memory and then submits its storage write with no await in between.
Storage engines apply writes in submission order, so the database sees mutations in the order memory
did, even when many requests interleave. If a write fails, the mutation is undone in memory and the
error propagates (the route answers 503 when storage is unavailable for now, else 500).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Sequence

from storage.engine import StorageEngine
from storage.records import RoomRecord
from storage.timefmt import iso_utc

log = logging.getLogger(__name__)


class Room:
    """One chat room. ``participants`` keeps the original's order; ``members`` answers "is X in?" in O(1)."""

    __slots__ = (
        "created_at",
        "created_by",
        "last_seq",
        "members",
        "name",
        "order",
        "participants",
        "room_id",
        "updated_at",
    )

    def __init__(self, record: RoomRecord, order: int) -> None:
        self.room_id = record.room_id
        self.name = record.name
        self.participants = list(record.participants)
        self.members = set(record.participants)
        self.created_by = record.created_by
        self.created_at = record.created_at
        self.updated_at = record.updated_at
        self.order = order
        self.last_seq = record.last_seq  # the fast mode hands out seqs from here

    def set_participants(self, participants: Iterable[str], updated_at: str) -> None:
        self.participants = list(participants)
        self.members = set(self.participants)
        self.updated_at = updated_at


def dedupe(names: Iterable[str]) -> list[str]:
    """Names in first-seen order, each once."""
    return list(dict.fromkeys(names))


class RoomRegistry:
    def __init__(self, storage: StorageEngine) -> None:
        self._storage = storage
        self._rooms: dict[str, Room] = {}
        self._by_user: dict[str, set[str]] = {}
        self._order = itertools.count()

    async def load(self) -> None:
        """Build the registry from storage; called once at start, before any request is served."""
        for record in await self._storage.load_rooms():
            self._add(Room(record, next(self._order)))
        log.info("room registry loaded: %d rooms", len(self._rooms))

    def __len__(self) -> int:
        return len(self._rooms)

    # -- seq: the registry is the one owner of each room's head in memory --------------------------
    def head(self, room_id: str) -> int:
        """The room's last seq (0 for a room that does not exist): committed (durable) or broadcast (fast)."""
        room = self._rooms.get(room_id)
        return 0 if room is None else room.last_seq

    def next_seq(self, room: Room) -> int:
        """Fast mode: hand out the room's next seq before its message is stored (storage writes it as given)."""
        room.last_seq += 1
        return room.last_seq

    def committed_seq(self, room_id: str, seq: int) -> None:
        """Durable mode: storage assigned ``seq`` in a commit; the head moves to it."""
        room = self._rooms.get(room_id)
        if room is not None and seq > room.last_seq:
            room.last_seq = seq

    def get(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def is_member(self, room_id: str, username: str) -> bool:
        room = self._rooms.get(room_id)
        return room is not None and username in room.members

    def rooms_of(self, username: str) -> list[Room]:
        """The user's rooms in creation order, oldest first (as GET /api/chatrooms lists them)."""
        rooms = [self._rooms[room_id] for room_id in self._by_user.get(username, ())]
        rooms.sort(key=lambda room: room.order)
        return rooms

    async def create(self, creator: str, specs: Sequence[tuple[str, Sequence[str]]]) -> list[Room]:
        """Create rooms named ``specs[i][0]`` with the creator first, then ``specs[i][1]`` deduplicated."""
        now = iso_utc(time.time())
        records = [
            RoomRecord(str(uuid.uuid4()), name, tuple(dedupe([creator, *invited])), creator, now, now)
            for name, invited in specs
        ]
        rooms = [Room(record, next(self._order)) for record in records]
        for room in rooms:
            self._add(room)
        try:
            await self._storage.insert_rooms(records)
        except BaseException:
            for room in rooms:
                self._remove(room)
            raise
        return rooms

    async def invite(self, room: Room, names: Sequence[str]) -> list[str]:
        """Append the names not yet in the room (each once); returns the full participant list."""
        added = [name for name in dedupe(names) if name not in room.members]
        if not added:
            return list(room.participants)
        before, before_updated = list(room.participants), room.updated_at
        self._set(room, [*room.participants, *added])
        try:
            stored = await self._storage.change_participants(room.room_id, added, None, room.updated_at)
        except BaseException:
            self._set(room, before, before_updated)
            raise
        self._agree(room, stored)
        return list(room.participants)

    async def leave(self, room: Room, username: str) -> bool:
        """Remove the user; returns True when the room had no one left and was deleted with its messages."""
        before, before_updated = list(room.participants), room.updated_at
        remaining = [name for name in room.participants if name != username]
        if remaining:
            self._set(room, remaining)
        else:
            self._remove(room)
        try:
            stored = await self._storage.change_participants(room.room_id, (), username, room.updated_at)
        except BaseException:
            if not remaining:
                self._add(room)
            self._set(room, before, before_updated)
            raise
        self._agree(room, stored)
        return not stored

    def _agree(self, room: Room, stored: tuple[str, ...] | None) -> None:
        """After a relative change: memory takes the stored list, which counts other processes' changes too
        (None or empty: the room is gone)."""
        if not stored:
            self._remove(room)
        elif list(stored) != room.participants:
            self._set(room, stored, room.updated_at)

    # -- another process changed rooms (PostgreSQL cluster) -----------------------------------------
    def apply_stored(self, records: Sequence[RoomRecord], asked: Iterable[str] | None = None) -> list[str]:
        """Make memory agree with storage for the rooms ``asked`` (None: every room). ``records`` are those of
        them that exist, in creation order; an asked room without a record was deleted. Heads only move
        forward. Returns the ids whose head moved."""
        moved: list[str] = []
        found = {record.room_id for record in records}
        for record in records:
            room = self._rooms.get(record.room_id)
            if room is None:
                self._add(Room(record, next(self._order)))
                continue
            if room.participants != list(record.participants):
                self._set(room, record.participants, record.updated_at)
            if record.last_seq > room.last_seq:
                room.last_seq = record.last_seq
                moved.append(room.room_id)
        for room_id in list(self._rooms) if asked is None else asked:
            room = self._rooms.get(room_id)
            if room is not None and room_id not in found:
                self._remove(room)
        return moved

    # -- index maintenance -------------------------------------------------------------------------
    def _add(self, room: Room) -> None:
        self._rooms[room.room_id] = room
        for name in room.members:
            self._by_user.setdefault(name, set()).add(room.room_id)

    def _remove(self, room: Room) -> None:
        self._rooms.pop(room.room_id, None)
        for name in room.members:
            self._unindex(name, room.room_id)

    def _set(self, room: Room, participants: Sequence[str], updated_at: str | None = None) -> None:
        for name in room.members - set(participants):
            self._unindex(name, room.room_id)
        room.set_participants(participants, updated_at or iso_utc(time.time()))
        for name in room.members:
            self._by_user.setdefault(name, set()).add(room.room_id)

    def _unindex(self, name: str, room_id: str) -> None:
        ids = self._by_user.get(name)
        if ids is not None:
            ids.discard(room_id)
            if not ids:
                del self._by_user[name]

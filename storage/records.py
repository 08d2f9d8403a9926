"""Plain records that cross the storage boundary. Immutable, so they can be shared between threads."""

from __future__ import annotations

import msgspec


class UserRecord(msgspec.Struct, frozen=True):
    """A stored user. ``password_hash`` is a bcrypt hash (``$2a$``/``$2b$``/``$2y$``)."""

    id: str
    username: str
    password_hash: str
    created_at: str
    updated_at: str


class RoomRecord(msgspec.Struct, frozen=True):
    """A stored chat room. ``participants`` keeps its order: the creator first, then invitees."""

    room_id: str
    name: str
    participants: tuple[str, ...]
    created_by: str
    created_at: str
    updated_at: str
    last_seq: int = 0
    """The highest seq ever committed in this room (survives delete-all)."""


class NewMessage(msgspec.Struct, frozen=True, gc=False):
    """A message accepted by the server and not yet stored. ``seq`` is assigned at commit."""

    id: str
    room_id: str
    sender: str
    content: str
    timestamp: str
    """Receive time, ISO-8601 UTC with milliseconds (``2025-06-24T07:02:14.663Z``)."""
    timestamp_ms: int
    """The same instant in milliseconds since the epoch, for ``since`` comparisons."""
    client_msg_id: str | None = None
    seq: int | None = None
    """None: storage assigns the room's next seq at commit (durable mode). Set: assigned by the server
    before a fast-mode broadcast; storage writes it as given."""


class StoredMessage(msgspec.Struct, frozen=True, gc=False):
    """A committed message. ``seq`` is per room, starts at 1, gap-free in commit order."""

    id: str
    room_id: str
    seq: int
    sender: str
    content: str
    timestamp: str
    created_at: str
    client_msg_id: str | None = None
    pk: int = 0
    """The message's place in the whole log (commit order across rooms, never reused): a reconnecting client's
    offset names a pk, meaning "everything in my rooms up to here"."""


class Appended(msgspec.Struct, frozen=True, gc=False):
    """Outcome of one message in an append batch.

    ``duplicate`` is true when ``(room, sender, client_msg_id)`` was stored before: ``message`` is then the
    original row, and nothing new was written. ``message`` is None when the room no longer exists.
    """

    message: StoredMessage | None
    duplicate: bool = False


class HistoryQuery(msgspec.Struct, frozen=True):
    """One page of a room's history, always returned ascending by ``seq``.

    Without ``after_seq`` the page is the *newest* ``limit`` rows that match; with it, the *oldest*
    ``limit`` rows after that seq (forward paging for catch-up). ``since_ms`` keeps rows strictly later.
    """

    room_id: str
    limit: int
    after_seq: int | None = None
    before_seq: int | None = None
    since_ms: int | None = None


class LogAdvanced(msgspec.Struct, frozen=True):
    """Another process committed messages: each room's last seq now (at least)."""

    heads: dict[str, int]


class RoomsChanged(msgspec.Struct, frozen=True):
    """Another process created, changed or deleted these rooms: read them again."""

    room_ids: tuple[str, ...]


class Resync(msgspec.Struct, frozen=True):
    """Changes may have been missed (the watch connection was lost, or a change was too big to describe):
    compare everything in memory with storage."""


StorageChange = LogAdvanced | RoomsChanged | Resync

"""What a group commit stores, decided once for every engine: seqs, pks, repeats.

Both engines read the same facts inside their transaction (each room's last seq, the rows already stored
under the batch's message ids and idempotency keys), hand them to :class:`BatchAssigner`, and write the rows
it returns. So the rules of the engine contract (``storage/engine.py``) live in one place: a repeat of a
stored (room, sender, clientMsgId) writes nothing and comes back as the stored row; a message whose id is
stored already (a batch retried after a commit whose answer was lost) comes back as that row; a deleted
room's message is refused; each room's counter moves past every seq it hands out or is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from storage.records import Appended, NewMessage, StoredMessage

IdempotencyKey = tuple[str, str, str]

# The column order of a message row, as both schemas name the columns.
ROW_COLUMNS = ("id", "room_id", "seq", "sender", "content", "ts_ms", "timestamp", "created_at", "client_msg_id", "pk")
MessageRow = tuple[str, str, int, str, str, int, str, str, str | None, int]


def idempotency_key(m: NewMessage | StoredMessage) -> IdempotencyKey | None:
    return None if m.client_msg_id is None else (m.room_id, m.sender, m.client_msg_id)


class BatchAssigner:
    """One batch's decisions. ``last_seq`` is changed in place (the caller restores it if the commit fails)."""

    def __init__(
        self,
        last_seq: dict[str, int],
        *,
        created_at: str,
        next_pk: Callable[[], int],
        prior: dict[IdempotencyKey, StoredMessage] | None = None,
        stored_ids: dict[str, StoredMessage] | None = None,
    ) -> None:
        self._last_seq = last_seq
        self._created_at = created_at
        self._next_pk = next_pk
        self._prior = prior if prior is not None else {}
        self._stored_ids = stored_ids if stored_ids is not None else {}
        self.rows: list[MessageRow] = []
        """The rows to insert, in batch order."""
        self.touched: set[str] = set()
        """Rooms whose counter moved: their ``last_seq`` must be written back."""

    def assign(self, m: NewMessage) -> Appended:
        """The message's seq and stored form (its row goes to ``rows``), or the stored row it repeats."""
        earlier = self._stored_ids.get(m.id)
        if earlier is not None:
            return Appended(message=earlier)  # stored by an attempt whose answer was lost: the same message
        last = self._last_seq.get(m.room_id)
        if last is None:
            return Appended(message=None)  # the room was deleted while the message waited
        key = idempotency_key(m)
        if key is not None and key in self._prior:
            if m.seq is not None and m.seq > last:
                # A fast-mode repeat broadcast under a seq of its own before storage could say it is one: that
                # seq stays unused, and the counter moves past it so no later message is given it.
                self._move(m.room_id, m.seq)
            return Appended(message=self._prior[key], duplicate=True)  # stored before, or earlier in this batch
        seq = last + 1 if m.seq is None else m.seq
        pk = self._next_pk()
        created = self._created_at
        self.rows.append(
            (m.id, m.room_id, seq, m.sender, m.content, m.timestamp_ms, m.timestamp, created, m.client_msg_id, pk)
        )
        if seq > last:
            self._move(m.room_id, seq)
        stored = StoredMessage(
            m.id, m.room_id, seq, m.sender, m.content, m.timestamp, self._created_at, m.client_msg_id, pk
        )
        if key is not None:
            self._prior[key] = stored
        return Appended(message=stored)

    def _move(self, room_id: str, seq: int) -> None:
        self._last_seq[room_id] = seq
        self.touched.add(room_id)


def changed_participants(stored: Sequence[str], add: Sequence[str], remove: str | None) -> tuple[str, ...]:
    """The participant list after a change: ``remove`` dropped, the new names of ``add`` appended in order."""
    kept = [name for name in stored if name != remove]
    return tuple(dict.fromkeys([*kept, *(name for name in add if name != remove)]))

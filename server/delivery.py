"""Delivery: which sessions get a room's messages, and from where: memory at the head, the log behind it.

Theory of operation. This module is the one owner of *subscriptions* (which sessions receive a room's
``message`` broadcasts) and of each subscription's *cursor*: the last seq written to that session for that
room. Nothing else changes them.

Two speeds, one order. A member at the head of its rooms gets each committed batch pushed from memory
(encoded once, one outbox entry per member per batch). When a push would take its outbox (or polling queue)
past ``high_water`` bytes, the member is switched to **catch-up** instead of being cut off: pushes to it
stop, and the catch-up task reads what it missed from storage, room by room in seq order, a page at a time,
whenever its outbox has drained below ``high_water / 4``. When every room's cursor has reached the room's
head, it goes back to live pushes in the same step (no await between the check and the switch), so nothing
is missed or sent twice at the switch. Memory per slow member is its outbox, at most ``high_water`` plus one
page, whatever its backlog: the durable log is the buffer. A push that does not continue a cursor (a gap)
also switches the member to catch-up, so a cursor never skips a seq.

Fast mode broadcasts before the commit, and the log holds only what is committed. So each room keeps the
*uncommitted tail*: the packets broadcast and not yet stored (at most the ingest queue in all, trimmed at
every commit). A lagging member reads storage up to the committed head, then takes the rest from the tail
and rejoins the live stream in the same step. Rule: catch-up reads only what is stored; what is not stored
yet comes from the tail, never twice, and a message lost in a crash is lost for everyone alike.

Pings, acks and other events are never held back: they go behind at most ``high_water`` bytes of messages,
so a slow reader answers pings in time and only a dead one is closed by the heartbeat.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from protocol.deflate import Compression, Outgoing
from protocol.events import MessageOut, message_packet
from protocol.recovery import cursors_offset, offset_packet, watermark_offset
from protocol.websocket import frame
from server.session import Session
from storage.engine import StorageEngine
from storage.records import HistoryQuery, StoredMessage

log = logging.getLogger(__name__)

# How often the catch-up task looks at lagging members whose outbox has not drained yet. Outboxes drain in
# their own writers; a short poll while someone lags costs nothing when nobody does.
CATCH_UP_POLL_S = 0.01
# After a failed log read (storage locked, disk error): how long before the next try. Short, because the
# member waits; long enough not to spin on a database that stays unavailable.
CATCH_UP_RETRY_S = 0.5


def stored_packet(m: StoredMessage) -> bytes:
    """The ``message`` packet of a stored message: the same bytes whether pushed live or read back from the log."""
    return message_packet(MessageOut("message", m.room_id, m.sender, m.content, m.timestamp, m.id, m.seq))


class Delivery:
    def __init__(
        self,
        storage: StorageEngine,
        head: Callable[[str], int],
        *,
        high_water: int,
        page: int,
        offsets: bool = False,
        exact_offsets: bool = False,
        compression: Compression | None = None,
    ) -> None:
        self._storage = storage
        # permessage-deflate: unless someone agreed on it and a packet is over the threshold, a broadcast takes
        # the plain path unchanged.
        self._compression = compression or Compression(enabled=False, threshold=0)
        self._head = head  # a room's last seq: committed (durable) or broadcast (fast)
        self.high_water = high_water
        self._low_water = high_water // 4
        self._page = page
        self.offsets = offsets  # send recovery offsets (protocol/recovery.py): durable mode
        # Several processes share the log (PostgreSQL): a batch's pk says nothing of the other processes'
        # commits this one has not applied yet, so a member is told its exact per-room cursors instead.
        self.exact_offsets = exact_offsets
        # One catch-up pass reads each (room, cursor) page once, however many members stand there.
        self._pages: dict[tuple[str, int], tuple[int, list[StoredMessage]]] = {}
        self.watermark = 0  # the pk of the last committed message: where a member at the head stands
        self._subscribers: dict[str, set[Session]] = {}
        self._tails: dict[str, deque[tuple[int, bytes]]] = {}
        self._lagging: set[Session] = set()
        self._wake = trio.Event()
        self.messages_pushed = 0
        self.messages_caught_up = 0
        self.lag_episodes = 0

    # -- subscriptions -----------------------------------------------------------------------------
    def subscribe(self, session: Session, room_id: str, cursor: int | None = None) -> None:
        """From now on the session gets the room's messages after ``cursor`` (default: its current head).

        A cursor behind the head (a recovering client): call ``catch_up_if_behind`` once all rooms are in.
        """
        if room_id in session.cursors:
            return
        head = self._head(room_id)
        if cursor is None:
            cursor = head
        elif not self.exact_offsets:
            cursor = min(cursor, head)
        # Cluster mode keeps a cursor past this process's head as given: the client got those messages through
        # another process, and this one has not heard of them yet (clamping would push them twice).
        session.cursors[room_id] = cursor
        self._subscribers.setdefault(room_id, set()).add(session)

    def catch_up_if_behind(self, session: Session) -> None:
        """After subscribing a recovering client to all its rooms: catch up from the log where it is behind."""
        if not session.lagging and any(c < self._head(r) for r, c in session.cursors.items()):
            self._start_lag(session)

    def unsubscribe(self, session: Session, room_id: str) -> None:
        session.cursors.pop(room_id, None)
        members = self._subscribers.get(room_id)
        if members is not None:
            members.discard(session)
            if not members:
                del self._subscribers[room_id]

    def unsubscribe_all(self, session: Session) -> None:
        for room_id in list(session.cursors):
            self.unsubscribe(session, room_id)
        self._lagging.discard(session)
        session.lagging = False  # a later CONNECT on the same session starts at the head, or catches up anew

    def rooms(self) -> int:
        return len(self._subscribers)

    def lagging(self) -> int:
        return len(self._lagging)

    def backlog(self) -> int:
        """Messages the lagging members have still to read, all rooms together (for /metrics: a scan)."""
        head = self._head
        return sum(max(0, head(room) - cursor) for s in self._lagging for room, cursor in s.cursors.items())

    # -- live pushes -------------------------------------------------------------------------------
    def publish_batch(self, runs: dict[str, tuple[int, list[bytes]]], watermark: int) -> None:
        """A committed batch, room by room (each room's messages consecutive from its first seq).

        With offsets on, each member at the head gets ``g<watermark>`` once all of the batch's rooms went out
        to it: appended to the room's own frames for members of one touched room (encoded once for all), and
        sent after the last room to members of several.
        """
        self.watermark = watermark
        if not self.offsets:
            for room_id, (first_seq, packets) in runs.items():
                self.publish(room_id, packets, first_seq)
            return
        if self.exact_offsets:
            self._publish_with_cursors(runs)
            return
        offset = offset_packet(watermark_offset(watermark))
        several: set[Session] = set()
        if len(runs) > 1:
            seen: set[Session] = set()
            for room_id in runs:
                for session in self._subscribers.get(room_id, ()):
                    if session in seen:
                        several.add(session)
                    seen.add(session)
        for room_id, (first_seq, packets) in runs.items():
            self.publish(room_id, packets, first_seq, offset=offset, not_for=several)
        for session in several:
            if not session.lagging:
                session.send(offset)

    def publish_fetched(self, room_id: str, packets: list[bytes], first_seq: int) -> None:
        """Another process's messages, read from the log: pushed as a local commit is, offsets included."""
        if self.offsets and self.exact_offsets:
            self._publish_with_cursors({room_id: (first_seq, packets)})
        else:
            self.publish(room_id, packets, first_seq)

    def _publish_with_cursors(self, runs: dict[str, tuple[int, list[bytes]]]) -> None:
        """Cluster mode: each member that got some of the batch is told its exact cursors (one offset each)."""
        pushed: set[Session] = set()
        for room_id, (first_seq, packets) in runs.items():
            self.publish(room_id, packets, first_seq, pushed=pushed)
        for session in pushed:
            if not session.lagging:
                self._send_cursors(session)

    def publish(
        self,
        room_id: str,
        packets: list[bytes],
        first_seq: int,
        *,
        offset: bytes | None = None,
        not_for: set[Session] | frozenset[Session] = frozenset(),
        pushed: set[Session] | None = None,
    ) -> int:
        """Push a room's consecutive messages (``first_seq``, ``first_seq + 1``, ...) to every member at the head.

        Encoded and framed once for all; ``offset`` (a packet) goes after them, except to the ``not_for``
        members. Returns how many members got them now; the others catch up later. Members that agreed on
        permessage-deflate get the compressed frames, made once for all of them on the first (:class:`Outgoing`).
        """
        members = self._subscribers.get(room_id)
        if not members:
            return 0
        last_seq = first_seq + len(packets) - 1
        before = first_seq - 1
        frames = frame(packets[0]) if len(packets) == 1 else b"".join([frame(p) for p in packets])
        limit = self.high_water - len(frames)
        with_offset = (packets, frames)
        if offset is not None:
            with_offset = ([*packets, offset], frames + frame(offset))
        deflating = self._compression.worth_deflating(packets, offset)
        outgoing: Outgoing | None = None
        count = 0
        for session in members:
            if session.lagging:
                continue
            if session.cursors[room_id] != before or session.pending_bytes > limit:
                self._start_lag(session)
                continue
            these, these_frames = (packets, frames) if session in not_for else with_offset
            if deflating and session.ws_deflate is not None:
                if outgoing is None:
                    outgoing = Outgoing(packets, frames, offset)
                these_frames = outgoing.frames_for(session.ws_deflate, with_tail=these is not packets)
            if session.send_many(these, these_frames):
                session.cursors[room_id] = last_seq
                count += 1
                if pushed is not None:
                    pushed.add(session)
        self.messages_pushed += count * len(packets)
        return count

    def behind(self, room_id: str) -> None:
        """The room's head moved without a push (another process committed): members not there catch up."""
        head = self._head(room_id)
        for session in self._subscribers.get(room_id, ()):
            if not session.lagging and session.cursors[room_id] < head:
                self._start_lag(session)

    def has_members(self, room_id: str) -> bool:
        return bool(self._subscribers.get(room_id))

    def subscribed_rooms(self) -> list[str]:
        return list(self._subscribers)

    def send_cursors(self, session: Session) -> None:
        """Tell the session exactly where it stands (a cluster member does so at CONNECT)."""
        self._send_cursors(session)

    def _start_lag(self, session: Session) -> None:
        session.lagging = True
        self._lagging.add(session)
        self.lag_episodes += 1
        self._wake.set()
        self._send_cursors(session)  # where it stands now exactly: a room of this batch may have gone out

    def _send_cursors(self, session: Session) -> None:
        if self.offsets:
            session.send(offset_packet(cursors_offset(session.cursors)))

    # -- fast mode's uncommitted tail ----------------------------------------------------------------
    def hold(self, room_id: str, seq: int, packet: bytes) -> None:
        """Fast mode: a message broadcast before its commit; kept until ``stored`` says it is in the log."""
        self._tails.setdefault(room_id, deque()).append((seq, packet))

    def stored(self, room_id: str, seq: int) -> None:
        """Everything of the room up to ``seq`` is in the log (or never will be): drop it from the tail."""
        tail = self._tails.get(room_id)
        if tail is None:
            return
        while tail and tail[0][0] <= seq:
            tail.popleft()
        if not tail:
            del self._tails[room_id]
        self._wake.set()  # a lagging member may be able to rejoin now

    # -- catch-up ----------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve lagging members from the log, one page at a time, as their outboxes drain."""
        task_status.started()
        while True:
            if not self._lagging:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            served = False
            self._pages.clear()  # a new pass reads afresh
            for session in list(self._lagging):
                if session.closed or not session.lagging:
                    self._lagging.discard(session)
                elif session.pending_bytes <= self._low_water:
                    try:
                        await self._catch_up(session)
                    except Exception:  # a failing log read must not end delivery for everyone: retry later
                        log.exception("catch-up read for session %s failed; retrying", session.sid)
                        await trio.sleep(CATCH_UP_RETRY_S)
                    served = True
            if not served:
                with trio.move_on_after(CATCH_UP_POLL_S):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _catch_up(self, session: Session) -> None:
        """One step for one member: a page of its furthest-behind room, then rejoin if it is at the head."""
        if self._rejoin(session):
            return
        behind = [
            (self._head(room_id) - cursor, room_id)
            for room_id, cursor in session.cursors.items()
            if cursor < self._head(room_id)
        ]
        if not behind:
            return
        _, room_id = max(behind)
        after = session.cursors[room_id]
        if after >= self._stored_head(room_id):
            self._push_tail(session, room_id, after)  # the rest is not stored yet: fast mode's tail
        else:
            await self._push_page(session, room_id, after)
        self._rejoin(session)

    async def _push_page(self, session: Session, room_id: str, after: int) -> None:
        """A page of the room's log after ``after``, cut at the high-water mark, and the cursor moved on."""
        cached = self._pages.get((room_id, after))
        if cached is None:
            stored_head = self._stored_head(room_id)  # before the read: what commits during it is not skipped
            rows = await self._storage.history(HistoryQuery(room_id, limit=self._page, after_seq=after))
            self._pages[(room_id, after)] = (stored_head, rows)
        else:
            stored_head, rows = cached
        if session.closed or session.cursors.get(room_id) != after:
            return  # closed, or left and joined again while we read: the next step starts afresh
        packets: list[bytes] = []
        frames: list[bytes] = []
        size = 0
        for row in rows:
            if row.seq != after + len(packets) + 1 or size > self.high_water:
                break  # a gap (a fast-mode crash skip) ends the page: the cursor moves past it below
            packet = stored_packet(row)
            packets.append(packet)
            frames.append(frame(packet))
            size += len(frames[-1])
        if packets:
            session.send_many(packets, b"".join(frames))
            session.cursors[room_id] = after + len(packets)
            self.messages_caught_up += len(packets)
            self._send_cursors(session)
        elif rows:  # the next stored seq is past a gap (a fast-mode crash skip): nothing is stored in between
            session.cursors[room_id] = rows[0].seq - 1
        else:  # nothing stored past the cursor though the head is further: deleted (delete-all) or never stored
            session.cursors[room_id] = max(after, stored_head)

    def _push_tail(self, session: Session, room_id: str, after: int) -> None:
        """Fast mode: the next part of the room's uncommitted tail, up to the high-water mark."""
        packets: list[bytes] = []
        size = 0
        last = after
        for seq, packet in self._tails.get(room_id, ()):
            if seq <= last:
                continue
            if seq != last + 1 or size > self.high_water:
                break
            packets.append(packet)
            size += len(packet)
            last = seq
        if packets:
            session.send_many(packets, b"".join([frame(p) for p in packets]))
            session.cursors[room_id] = last
            self.messages_caught_up += len(packets)
            self._send_cursors(session)

    def _stored_head(self, room_id: str) -> int:
        """The last seq that is in the log: the head, less the fast-mode tail."""
        tail = self._tails.get(room_id)
        return tail[0][0] - 1 if tail else self._head(room_id)

    def _rejoin(self, session: Session) -> bool:
        """Back to live pushes if every room is at its head or within reach of its tail (no await here)."""
        plan: list[tuple[str, list[tuple[int, bytes]]]] = []
        size = 0
        for room_id, cursor in session.cursors.items():
            if cursor >= self._head(room_id):
                continue
            tail = self._tails.get(room_id)
            if not tail or tail[0][0] > cursor + 1:
                return False
            missing = [(seq, packet) for seq, packet in tail if seq > cursor]
            size += sum(len(packet) for _, packet in missing)
            plan.append((room_id, missing))
        if size > self.high_water:
            return False
        for room_id, missing in plan:
            packets = [packet for _, packet in missing]
            session.send_many(packets, b"".join([frame(p) for p in packets]))
            session.cursors[room_id] = missing[-1][0]
        session.lagging = False
        self._lagging.discard(session)
        if plan:
            self._send_cursors(session)
        return True

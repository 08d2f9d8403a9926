"""The chat app: MinitalkChat's events on top of the realtime transport (server/hub.py).

What a CONNECT means here (authenticate by token, join every room the user is in, contract §3.2, and recover
a socket.io-client's state from the log: protocol/recovery.py), the three events (``send_message``,
``join_room``, ``leave_room``, contract §3.3-3.4), and the batcher's commit callbacks that broadcast and ack.

Send path (contract §3.3 and §8): validate once (decode), check membership in memory, stamp id and time,
take an ingest slot (awaiting only when the queue is full: backpressure) and hand the message to the
write-behind batcher. In **durable** mode the commit callback broadcasts and acks, so everything anyone saw
is stored; in **fast** mode the broadcast happens at once (seq from the room registry) and the ack still waits
for the commit.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import trio
from opentelemetry.trace import SpanKind

from protocol import socketio
from protocol.errors import SocketIOError
from protocol.events import (
    ERR_NOT_MEMBER,
    ERR_SEND_FAILED,
    AckError,
    AckOk,
    Ignored,
    JoinRoom,
    LeaveRoom,
    MessageOut,
    Rejected,
    SendMessage,
    ack_packet,
    decode_event,
    error_packet,
    event_packet,
    message_packet,
)
from protocol.recovery import Position, connect_reply, new_pid, pid_position, recovery_request
from server.delivery import stored_packet
from server.hub import Hub
from server.rooms import RoomRegistry
from server.send_limit import SendRateLimit
from server.session import Session
from server.tokens import Tokens
from server.tracing import now_ns
from storage.batcher import WriteBehindBatcher
from storage.engine import StorageEngine
from storage.errors import StorageError
from storage.ids import new_id
from storage.records import Appended, NewMessage, StoredMessage
from storage.timefmt import iso_utc

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

AUTH_ERROR = b'44{"message":"Authentication error"}'
# Repeats of one in-flight clientMsgId kept to be acked with their original: a real client retries a few times.
MAX_WAITING_REPEATS = 32
REFRESH_EVERY_S = 1.0
REFRESH_MEMORY = 10_000  # (room, user) pairs remembered; past it the memory starts afresh
ERR_NUL = "content and clientMsgId must not contain the character U+0000"
ERR_SHUTTING_DOWN = "Server is shutting down: message not accepted, send it again after reconnecting"


class Ticket:
    """Who to answer when a message is committed."""

    __slots__ = ("ack_id", "received_ns", "session", "span")

    def __init__(self, session: Session, ack_id: int | None) -> None:
        self.session = session
        self.ack_id = ack_id
        self.span: Span | None = None  # a traced send (server/tracing.py): its span, ended at the ack
        self.received_ns = 0  # and when its frame arrived


class ChatApp:
    """The app the hub hands CONNECTs and events to; the batcher's commit listener."""

    def __init__(self, hub: Hub, registry: RoomRegistry, tokens: Tokens, storage: StorageEngine) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.registry = registry
        self.tokens = tokens
        self.storage = storage
        # Fast mode's idempotency window: see _remember.
        self._recent: OrderedDict[tuple[str, str, str], list[Ticket] | AckOk] = OrderedDict()
        self.accepting = True
        self.batcher: WriteBehindBatcher[Ticket] | None = None
        self.send_limit: SendRateLimit | None = None  # set by the service; None: no per-connection limit
        # Set by the service in a cluster (PostgreSQL): read one room again before telling someone "not a member".
        self.refresh_room: Callable[[str], Awaitable[None]] | None = None
        self._refreshed: dict[tuple[str, str], float] = {}  # (room, user) → when a "no" was last checked

    async def on_connect(self, session: Session, data: str) -> None:
        tracing = self.hub.tracing
        if not tracing.enabled:
            await self._connect(session, data)
            return
        with tracing.span("socket.io connect") as span:
            assert span is not None
            span.set_attribute("engineio.sid", session.sid)
            span.set_attribute("engineio.transport", "websocket" if session.ws is not None else "polling")
            await self._connect(session, data)
            if session.user is None:
                tracing.failed(span, "auth", "Authentication error")
            else:
                span.set_attribute("enduser.id", session.user)
                span.set_attribute("socketio.rooms", len(session.cursors))

    async def _connect(self, session: Session, data: str) -> None:
        """CONNECT: authenticate, join every room the user is in (§3.2), and recover if the client asks.

        A socket.io-client that was connected before sends back its ``pid`` and last offset: its rooms are
        joined at the cursors that offset names, and what it missed comes from the log (protocol/recovery.py).
        """
        user = self.tokens.username(session.token) if session.token else None
        if user is None:
            session.send(AUTH_ERROR)
            self.hub.metrics.auth_failures.labels("socket").inc()
            return
        session.user = user
        session.sio_sid = session.sio_sid or secrets.token_urlsafe(15)
        request = recovery_request(data) if self.hub.delivery.offsets else None
        cursors: dict[str, int] = {}
        pid = new_pid(self.hub.delivery.watermark) if self.hub.delivery.offsets else None
        if request is not None:
            rooms = [room.room_id for room in self.registry.rooms_of(user)]
            try:
                cursors = await self._recovered_cursors(rooms, request[1], request[0])
                pid = request[0]
            except StorageError as exc:  # served as a new connection (recovered false): it can use after_seq
                log.warning("could not recover session %s of %s: %s", session.sid, user, exc)
            if session.closed:
                return
        session.send(connect_reply(session.sio_sid, pid))
        log.info(
            "connect: %s from %s (session %s, %s%s)",
            user,
            session.address or "-",
            session.sid,
            "websocket" if session.ws is not None else "polling",
            ", recovered" if request is not None and pid == request[0] else "",
            extra={"session": session.sid, "user": user, "address": session.address},
        )
        for room in self.registry.rooms_of(user):
            self.hub.delivery.subscribe(session, room.room_id, cursors.get(room.room_id))
        self._send_cursors(session)  # where it stands, exactly (the pid's pk may not be)
        self.hub.delivery.catch_up_if_behind(session)

    async def _recovered_cursors(self, rooms: list[str], position: Position, pid: str) -> dict[str, int]:
        """Per-room cursors of a recovering client: given by its offset, or found in the log from a watermark."""
        if position.cursors is None:
            assert position.pk is not None
            return await self.storage.cursors_at(rooms, position.pk)
        cursors = {room: position.cursors[room] for room in rooms if room in position.cursors}
        missing = [room for room in rooms if room not in cursors]
        fallback = pid_position(pid)  # rooms joined after its last cursors offset: from where it first stood
        if missing and fallback is not None and fallback.pk is not None:
            cursors.update(await self.storage.cursors_at(missing, fallback.pk))
        return cursors

    async def on_event(self, session: Session, packet: socketio.SioPacket) -> None:
        if packet.type != socketio.SioType.EVENT:
            return  # acks and binary events: no MinitalkChat client sends them
        try:
            event = decode_event(packet.data)
        except SocketIOError:
            self.hub.close_session(session, "malformed JSON in an event")
            return
        if isinstance(event, SendMessage):
            await self._send_message(session, event, packet.ack_id)
        elif isinstance(event, JoinRoom):
            room_id = event.data.roomId
            if await self._is_member(room_id, session.user or ""):
                self.hub.delivery.subscribe(session, room_id)
                session.send(event_packet("joined_room", {"roomId": room_id}))
                self._send_cursors(session)
            else:
                session.send(error_packet(ERR_NOT_MEMBER))
        elif isinstance(event, LeaveRoom):
            self.hub.delivery.unsubscribe(session, event.data.roomId)
            session.send(event_packet("left_room", {"roomId": event.data.roomId}))
            self._send_cursors(session)
        elif isinstance(event, Rejected):
            self._reject(session, event.message, packet.ack_id if event.event == "send_message" else None)
        else:
            assert isinstance(event, Ignored)

    async def _is_member(self, room_id: str, user: str) -> bool:
        """Membership from memory; in a cluster, a "no" is checked against storage once before it is given: the
        room may have been created, or the user invited, through another process one NOTIFY ago."""
        if self.registry.is_member(room_id, user):
            return True
        if self.refresh_room is None:
            return False
        # Once a second per (room, user) at most: a client naming rooms it is not in must not turn every send
        # into a storage read (the reads queue with the group commits).
        now = time.monotonic()
        if now - self._refreshed.get((room_id, user), -math.inf) < REFRESH_EVERY_S:
            return False
        if len(self._refreshed) >= REFRESH_MEMORY:
            self._refreshed.clear()
        self._refreshed[(room_id, user)] = now
        try:
            await self.refresh_room(room_id)
        except StorageError as exc:
            log.warning("could not read room %s again: %s", room_id, exc)
            return False
        return self.registry.is_member(room_id, user)

    def _send_cursors(self, session: Session) -> None:
        """Cluster mode: the member's exact place after its rooms changed (a reconnect resumes from it)."""
        if self.hub.delivery.exact_offsets:
            self.hub.delivery.send_cursors(session)

    def _reject(self, session: Session, message: str, ack_id: int | None) -> None:
        self.hub.metrics.messages_rejected.inc()
        session.send(error_packet(message))
        if ack_id is not None:
            session.send(ack_packet(ack_id, AckError(message)))

    async def _send_message(self, session: Session, event: SendMessage, ack_id: int | None) -> None:
        received_ns = now_ns() if self.hub.tracing.message_ratio else 0  # nothing more when tracing is off
        if self.send_limit is not None and not self.send_limit.allow(session):
            self._reject(session, self.send_limit.refusal, ack_id)
            return
        data, user = event.data, session.user
        assert user is not None and self.batcher is not None
        if not self.accepting:
            self._reject(session, ERR_SHUTTING_DOWN, ack_id)
            return
        if len(data.content) > self.settings.max_content_chars:
            self._reject(
                session, f"Message content too long (limit {self.settings.max_content_chars} characters)", ack_id
            )
            return
        if "\x00" in data.content or (data.clientMsgId is not None and "\x00" in data.clientMsgId):
            # PostgreSQL's text cannot hold U+0000: refused here, for every engine alike, so one sender's NUL
            # never fails the group commit that carries other senders' messages.
            self._reject(session, ERR_NUL, ack_id)
            return
        # The memory check first: no coroutine on the hot path when the answer is yes.
        if not self.registry.is_member(data.roomId, user) and not await self._is_member(data.roomId, user):
            self._reject(session, ERR_NOT_MEMBER, ack_id)
            return
        ticket = Ticket(session, ack_id)
        fast = self.settings.mode == "fast"
        key = None if data.clientMsgId is None else (data.roomId, user, data.clientMsgId)
        if fast and key is not None and self._answer_repeat(key, ticket):
            return
        await self.batcher.wait_for_room()  # backpressure: waits only while the ingest queue is full
        # From here to the submit there is no await: the seq order is the queue order.
        room = self.registry.get(data.roomId)
        if room is None or user not in room.members:  # removed while we waited for room in the queue
            self.batcher.release_room()
            self._reject(session, ERR_NOT_MEMBER, ack_id)
            return
        if fast and key is not None and self._answer_repeat(key, ticket):  # the original got in while we waited
            self.batcher.release_room()
            return
        now = time.time()
        now_ms = int(now * 1000)
        message = NewMessage(new_id(now_ms), room.room_id, user, data.content, iso_utc(now), now_ms, data.clientMsgId)
        if fast:
            seq = self.registry.next_seq(room)
            message = msgspec.structs.replace(message, seq=seq)
            if key is not None:
                self._remember(key, [])
            self._broadcast_message(
                MessageOut("message", room.room_id, user, data.content, message.timestamp, message.id, seq)
            )
        if received_ns and self.hub.tracing.sample_message():
            # Only a send that reaches the batcher is traced: every span started here ends at its ack or failure.
            ticket.span = self.hub.tracing.start("send_message", start_ns=received_ns, kind=SpanKind.CONSUMER)
            ticket.received_ns = received_ns
            ticket.span.set_attribute("chat.room_id", data.roomId)
            ticket.span.set_attribute("enduser.id", user)
        self.batcher.submit_nowait(message, ticket)

    def _answer_repeat(self, key: tuple[str, str, str], ticket: Ticket) -> bool:
        """Fast mode: a clientMsgId broadcast already is not broadcast again. True when ``ticket`` is taken care
        of: acked now with the stored original, or queued to be acked when the original is committed."""
        known = self._recent.get(key)
        if known is None:
            return False
        if isinstance(known, AckOk):
            self._answer(ticket, known)
        elif len(known) < MAX_WAITING_REPEATS:
            known.append(ticket)
        else:  # a client resending one id in a loop while storage is down must not grow memory
            self._answer(ticket, AckError(ERR_SEND_FAILED))
        return True

    def _remember(self, key: tuple[str, str, str], entry: list[Ticket] | AckOk) -> None:
        """Fast mode's idempotency window: clientMsgIds broadcast and not yet stored (the repeats waiting for
        their ack), then stored (their ack). Bounded: the oldest stored entries go first."""
        recent = self._recent
        recent[key] = entry
        recent.move_to_end(key)
        while len(recent) > self.settings.recent_ids:
            oldest, value = next(iter(recent.items()))
            if isinstance(value, list):  # in flight: never forgotten before it is stored
                break
            del recent[oldest]

    def remember_stored(self, messages: list[StoredMessage]) -> None:
        """Fast mode at start: the newest stored idempotent sends, so a retry after a restart is not broadcast."""
        for m in messages:
            if m.client_msg_id is not None:
                self._remember((m.room_id, m.sender, m.client_msg_id), AckOk(m.id, m.seq, m.timestamp))

    def stop_accepting(self) -> None:
        """Graceful stop, first step: later sends are refused; what was accepted is committed and acked."""
        self.accepting = False

    def committed(self, batch: list[tuple[NewMessage, Ticket]], results: list[Appended]) -> None:
        durable = self.settings.mode == "durable"
        self.hub.metrics.messages_accepted.inc(len(batch))  # per batch, not per message: counters cost a lock
        # Durable mode broadcasts a batch's messages room by room, each room's in seq order, joined into one
        # outbox entry per member: a 1,000-member room costs 1,000 pushes per batch, not per message.
        outgoing: dict[str, tuple[int, list[bytes]]] = {}
        watermark = 0
        for (message, _), result in zip(batch, results, strict=True):
            stored = result.message
            if not durable and message.seq is not None:
                self.hub.delivery.stored(message.room_id, message.seq)  # in the log now (or a repeat: never)
            if stored is None or result.duplicate:
                continue
            self.registry.committed_seq(stored.room_id, stored.seq)
            watermark = max(watermark, stored.pk)
            if durable:
                run = outgoing.setdefault(stored.room_id, (stored.seq, []))
                run[1].append(stored_packet(stored))
        self.hub.metrics.observe_received(batch[0][0].timestamp_ms)  # FIFO: the first is the batch's oldest
        if outgoing:
            self.hub.delivery.publish_batch(outgoing, watermark)
            self.hub.flusher.stamp(trio.current_time())
            self.hub.messages_broadcast += sum(len(packets) for _, packets in outgoing.values())
        broadcast_ns = now_ns() if self.hub.tracing.message_ratio else 0
        # Acks after the broadcasts: a sender that is in the room sees its message before the ack.
        for (message, ticket), result in zip(batch, results, strict=True):
            stored = result.message
            ack: AckOk | AckError = (
                AckError(ERR_NOT_MEMBER) if stored is None else AckOk(stored.id, stored.seq, stored.timestamp)
            )
            self._answer(ticket, ack)
            if not durable and message.client_msg_id is not None:
                self._settle_repeats((message.room_id, message.sender, message.client_msg_id), ack)
        if broadcast_ns:
            self._trace_committed(batch, results, broadcast_ns)

    def _trace_committed(
        self, batch: list[tuple[NewMessage, Ticket]], results: list[Appended], broadcast_ns: int
    ) -> None:
        """The sampled messages of a committed batch: their spans get the steps the batch took, then end."""
        tracing = self.hub.tracing
        assert self.batcher is not None
        commit_start, commit_end = self.batcher.last_commit_ns
        acked_ns = now_ns()
        for (_, ticket), result in zip(batch, results, strict=True):
            span = ticket.span
            if span is None:
                continue
            tracing.child(span, "queue", ticket.received_ns, commit_start)
            tracing.child(span, "commit", commit_start, commit_end, **{"chat.batch_size": len(batch)})
            if self.settings.mode == "durable":
                tracing.child(span, "broadcast", commit_end, broadcast_ns)
            tracing.child(span, "ack", broadcast_ns, acked_ns)
            if result.message is not None:
                span.set_attribute("chat.message_id", result.message.id)
                span.set_attribute("chat.seq", result.message.seq)
                span.set_attribute("chat.duplicate", result.duplicate)
            else:
                tracing.failed(span, "not_member", ERR_NOT_MEMBER)
            span.end(end_time=acked_ns)

    def failed(self, batch: list[tuple[NewMessage, Ticket]], error: BaseException) -> None:
        lost = sum(1 for message, _ in batch if message.seq is not None)
        if lost:  # fast mode, giving up at the shutdown deadline: members saw these, storage never will
            log.error("%d broadcast messages could not be stored before the shutdown deadline", lost)
        log.error("a batch of %d messages could not be stored: %s", len(batch), error)
        for message, ticket in batch:
            if message.seq is not None:
                self.hub.delivery.stored(message.room_id, message.seq)  # never will be: catch-up must not wait for it
            if not ticket.session.closed:
                ticket.session.send(error_packet(ERR_SEND_FAILED))
            self._answer(ticket, AckError(ERR_SEND_FAILED))
            if ticket.span is not None:
                self.hub.tracing.failed(ticket.span, "storage", f"{ERR_SEND_FAILED}: {error}")
                ticket.span.end()
            if message.client_msg_id is not None and message.seq is not None:
                self._settle_repeats((message.room_id, message.sender, message.client_msg_id), None)

    def _settle_repeats(self, key: tuple[str, str, str], ack: AckOk | AckError | None) -> None:
        """The original of a fast-mode clientMsgId is stored (or lost): answer its repeats the same way."""
        waiting = self._recent.get(key)
        if isinstance(waiting, list):
            for ticket in waiting:
                self._answer(ticket, ack if ack is not None else AckError(ERR_SEND_FAILED))
            if isinstance(ack, AckOk):
                self._recent[key] = ack
            else:
                del self._recent[key]

    def _answer(self, ticket: Ticket, ack: AckOk | AckError) -> None:
        if ticket.ack_id is not None and not ticket.session.closed:
            ticket.session.send(ack_packet(ticket.ack_id, ack))

    def _broadcast_message(self, message: MessageOut) -> None:
        """Fast mode: one message to its room at once, and into the room's uncommitted tail until stored."""
        packet = message_packet(message)
        self.hub.delivery.hold(message.roomId, message.seq, packet)
        self.hub.delivery.publish(message.roomId, [packet], message.seq)
        self.hub.messages_broadcast += 1  # exported at scrape time

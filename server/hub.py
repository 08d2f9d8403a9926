"""The realtime transport: Engine.IO sessions, their heartbeat and error boundary, Socket.IO packets.

It knows no chat: a session's Socket.IO CONNECTs and events go to the :class:`App` mounted on their namespace
(``server/chat.py`` is ``/``; a CONNECT to a namespace nothing is mounted on is refused), binary packets
(types 5 and 6) are handed over once all their attachments have arrived (bounded in count and bytes), and a
hub with an :class:`EngineApp` speaks Engine.IO only (no Socket.IO: each message goes to that app).
Who receives a room's messages is :class:`~server.delivery.Delivery`'s business. Rooms there are
*subscriptions*, as Socket.IO rooms are; *membership* (who may send) lives in the room registry. They differ
on purpose (contract §3.2-3.4): a user who leaves by REST keeps receiving until ``leave_room`` or reconnect.
"""

from __future__ import annotations

import binascii
import heapq
import logging
import math
import secrets
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec
import trio

from protocol import engineio, socketio
from protocol.deflate import Compression
from protocol.engineio import BINARY, OpenPayload, PacketType
from protocol.engineio_session import Beat
from protocol.errors import SocketIOError
from protocol.socketio import SioType
from server.delivery import Delivery
from server.metrics import Metrics, disconnect_kind
from server.outbox import Flusher
from server.rooms import RoomRegistry
from server.session import Session
from server.tracing import OFF, Tracing, now_ns
from storage.engine import StorageEngine

log = logging.getLogger(__name__)

Mode = Literal["durable", "fast"]


class HubSettings(msgspec.Struct, frozen=True, kw_only=True):
    mode: Mode = "durable"
    ping_interval: float = 25.0
    ping_timeout: float = 60.0
    connect_timeout: float = 45.0
    max_packet_bytes: int = 1024 * 1024
    max_content_chars: int = 10_000
    outbox_max_bytes: int = 4 * 1024 * 1024
    outbox_max_messages: int = 10_000
    max_connections: int = 20_000
    recent_ids: int = 100_000
    catchup_high_water: int = 1024 * 1024
    catchup_page: int = 500
    max_attachments: int = 10  # binary attachments of one Socket.IO packet; their bytes: max_packet_bytes
    cluster: bool = False  # several processes share the log (PostgreSQL): exact per-room recovery offsets
    ws_compression: bool = True  # answer permessage-deflate offers (server/config.py says why)
    ws_compression_threshold: int = 1024  # bytes: larger websocket messages are compressed for those that agreed
    ws_compression_level: int = 6  # zlib's level for them (server/config.py says why)


class App(Protocol):
    """What the hub hands one namespace's Socket.IO CONNECTs and events to (server/chat.py is ``/``).

    ``on_connect`` gets the CONNECT's JSON text ('' when absent) and accepts with :meth:`Hub.accept` (or
    answers CONNECT_ERROR itself). ``on_event`` gets EVENTs, ACKs and their binary forms, attachments in
    ``packet.binary`` (:func:`protocol.socketio.decode_args` decodes them); raising SocketIOError closes the
    session as a malformed packet does.
    """

    async def on_connect(self, session: Session, data: str) -> None: ...

    async def on_event(self, session: Session, packet: socketio.SioPacket) -> None: ...


class EngineApp(Protocol):
    """An app on Engine.IO itself (no Socket.IO): each message and binary packet of a session, in order."""

    async def on_message(self, session: Session, data: str) -> None: ...

    async def on_binary(self, session: Session, data: bytes) -> None: ...


class Hub:
    def __init__(self, settings: HubSettings, registry: RoomRegistry, metrics: Metrics, storage: StorageEngine) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing: Tracing = OFF
        self.flusher = Flusher()
        self.flusher.on_written = metrics.commit_to_write.observe
        self.sessions: dict[str, Session] = {}
        self.storage = storage
        self.compression = Compression(
            enabled=settings.ws_compression,
            threshold=settings.ws_compression_threshold,
            level=settings.ws_compression_level,
        )
        self.delivery = Delivery(
            storage,
            registry.head,
            high_water=settings.catchup_high_water,
            page=settings.catchup_page,
            # Recovery offsets name places in the log: in fast mode members see messages before the log has them.
            offsets=settings.mode == "durable",
            exact_offsets=settings.cluster,
            compression=self.compression,
        )
        self._doomed: list[tuple[Session, str]] = []
        # The heartbeat timer: (when, n, session), at most one live entry per session (its timer_at);
        # entries whose time is not their session's timer_at are stale and skipped when they come up.
        self._timers: list[tuple[float, int, Session]] = []
        self._timer_count = 0
        self._timer_scope: trio.CancelScope | None = None
        self._reaper = trio.lowlevel.ParkingLot()
        self.app: App | None = None  # the namespace "/" (server/chat.py); set before serving (see mount)
        self.apps: dict[str, App] = {}  # every other namespace
        # What an Engine.IO message and a binary packet go to: Socket.IO, unless an EngineApp is mounted.
        self._on_message: Callable[[Session, str], Awaitable[None]] = self._on_socketio
        self._on_binary: Callable[[Session, bytes], Awaitable[None]] = self._on_attachment
        self.messages_broadcast = 0

    def mount(self, namespace: str, app: App) -> None:
        """Serve the Socket.IO ``namespace`` with ``app``."""
        if namespace == "/":
            self.app = app
        else:
            self.apps[namespace] = app

    def mount_engine(self, app: EngineApp) -> None:
        """Speak Engine.IO only: every message and binary packet goes to ``app``, and no CONNECT is awaited."""
        self._on_message = app.on_message
        self._on_binary = app.on_binary

    # -- lifetime ----------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.flusher.run)
            await nursery.start(self.delivery.run)
            nursery.start_soon(self._heartbeat)
            nursery.start_soon(self._reap)
            nursery.start_soon(self.metrics.watch_loop_lag)
            task_status.started()

    def close_all(self, reason: str) -> None:
        for session in list(self.sessions.values()):
            self.close_session(session, reason)

    # -- sessions ----------------------------------------------------------------------------------
    def open_session(self, token: str | None, *, websocket: bool = False, address: str | None = None) -> Session | None:
        """A new Engine.IO session, or None when the connection limit is reached."""
        started_ns = now_ns() if self.tracing.enabled else 0
        if len(self.sessions) >= self.settings.max_connections:
            if started_ns:
                self._trace_handshake(started_ns, websocket, None)
            return None
        s = self.settings
        session = Session(
            secrets.token_urlsafe(15),
            token,
            now=trio.current_time(),
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            connect_timeout=s.connect_timeout,
            websocket=websocket,
            max_queue_bytes=s.outbox_max_bytes,
            max_queue_packets=s.outbox_max_messages,
            on_overflow=self.overflowed,
        )
        session.address = address
        self.sessions[session.sid] = session
        self._schedule(session)
        if started_ns:
            self._trace_handshake(started_ns, websocket, session)
        return session

    def _trace_handshake(self, started_ns: int, websocket: bool, session: Session | None) -> None:
        """One span per Engine.IO handshake (polling's is a child of its HTTP request's span)."""
        span = self.tracing.start("engine.io handshake", start_ns=started_ns)
        span.set_attribute("engineio.transport", "websocket" if websocket else "polling")
        if session is None:
            self.tracing.failed(span, "connection_limit", "server at its connection limit")
        else:
            span.set_attribute("engineio.sid", session.sid)
            span.set_attribute("client.address", session.address or "")
        span.end()

    def open_packet(self, session: Session, *, upgrades: list[str]) -> bytes:
        s = self.settings
        payload = OpenPayload(
            session.sid, upgrades, int(s.ping_interval * 1000), int(s.ping_timeout * 1000), s.max_packet_bytes
        )
        return engineio.encode_open(payload).encode()

    def close_session(self, session: Session, reason: str, *, by_client: bool = False) -> None:
        session.close(reason, by_client=by_client)  # the first reason stays
        if self.sessions.get(session.sid) is not session:
            return  # already torn down
        del self.sessions[session.sid]
        self.delivery.unsubscribe_all(session)
        session.close_transport()
        self.metrics.disconnects.labels(disconnect_kind(session.close_reason)).inc()
        seconds = trio.current_time() - session.created
        # One line per connection's end, never one per message: who, why, and how long it lasted.
        log.info(
            "disconnect: %s from %s after %.1f s (session %s): %s",
            session.user or "-",
            session.address or "-",
            seconds,
            session.sid,
            session.close_reason,
            extra={
                "session": session.sid,
                "user": session.user,
                "address": session.address,
                "reason": session.close_reason,
                "duration_s": round(seconds, 3),
            },
        )

    def connection_failed(self, session: Session | None, exc: BaseException, where: str) -> None:
        """The error boundary of one connection: an unexpected exception ends that connection, nothing else.

        Logged once with the session and user (the traceback is the bug report), counted, and the session
        closed; the process and every other client carry on.
        """
        self.metrics.connection_errors.inc()
        sid = session.sid if session is not None else "-"
        user = session.user if session is not None else None
        log.error("unexpected error in %s (session %s, user %s): closing it", where, sid, user, exc_info=exc)
        if session is not None:
            self.close_session(session, f"internal error: {type(exc).__name__}")

    def overflowed(self, session: Session, reason: str) -> None:
        # Called from inside a broadcast loop: close later, so the loop's set is not changed under it.
        self._doomed.append((session, reason))
        self._reaper.unpark()

    async def _reap(self) -> None:
        while True:
            await self._reaper.park()
            doomed, self._doomed = self._doomed, []
            for session, reason in doomed:
                if not session.closed:
                    log.warning("disconnecting slow consumer %s (%s): %s", session.sid, session.user, reason)
                    self.metrics.slow_consumer_disconnects.inc()
                    self.close_session(session, f"slow consumer: {reason}")

    # -- heartbeat -------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Wake at the earliest session deadline (engine.io's per-socket timers, as one heap) and tick."""
        while True:
            with trio.CancelScope(deadline=self._timers[0][0] if self._timers else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                when, _, session = heapq.heappop(self._timers)
                if when == session.timer_at:
                    session.timer_at = math.inf
                    self.heartbeat(session, now)

    def heartbeat(self, session: Session, now: float) -> bool:
        """Run the session's timers at ``now`` (send a due ping, close a timed-out session); False if closed."""
        connected = session.sio_sid is not None or session.user is not None or bool(session.namespaces)
        beat = session.tick(now, connected=connected)
        if beat is Beat.PING:
            session.send(engineio.PING.encode())
        elif beat is Beat.CLOSED:
            self.close_session(session, session.close_reason)
        self._schedule(session)
        return not session.closed

    def _schedule(self, session: Session) -> None:
        when = session.next_deadline()
        if when >= session.timer_at:
            return  # the timer comes up earlier; it ticks and reschedules then
        session.timer_at = when
        self._timer_count += 1
        heapq.heappush(self._timers, (when, self._timer_count, session))
        if self._timer_scope is not None and when < self._timer_scope.deadline:
            self._timer_scope.deadline = when

    # -- inbound -----------------------------------------------------------------------------------
    async def on_packet(self, session: Session, kind: int, data: str) -> None:
        """One Engine.IO packet from the client, in arrival order."""
        if kind == PacketType.MESSAGE:
            await self._on_message(session, data)
        elif kind == PacketType.PONG:
            session.pong(trio.current_time())
            self._schedule(session)
        elif kind == PacketType.PING:
            session.send(b"3" + data.encode())
        elif kind == PacketType.CLOSE:
            self.close_session(session, "client closed", by_client=True)
        elif kind == BINARY:  # polling: b<base64>
            try:
                raw = b64decode(data, validate=True)
            except binascii.Error:
                self.close_session(session, "bad base64 in a binary packet")
                return
            await self._on_binary(session, raw)
        # OPEN, UPGRADE (handled by the websocket endpoint) and NOOP: nothing to do.

    async def on_binary(self, session: Session, data: bytes) -> None:
        """One binary Engine.IO packet (a websocket binary frame), in arrival order."""
        await self._on_binary(session, data)

    async def _on_socketio(self, session: Session, text: str) -> None:
        try:
            packet = socketio.decode(text)
        except SocketIOError as exc:
            self.close_session(session, f"bad Socket.IO packet: {exc}")
            return
        if session.partial is not None:
            self.close_session(session, "a text packet while attachments were awaited")
            return
        if packet.type == SioType.EVENT and packet.namespace == "/":  # the chat's hot path: no detour
            if session.sio_sid is not None:
                assert self.app is not None
                try:
                    await self.app.on_event(session, packet)
                except SocketIOError as exc:
                    self.close_session(session, f"bad Socket.IO packet: {exc}")
            return
        if packet.attachments:
            if packet.attachments > self.settings.max_attachments:
                self.close_session(session, f"too many attachments ({packet.attachments})")
                return
            session.partial = (packet, [], 0)
            return
        await self._dispatch(session, packet)

    async def _on_attachment(self, session: Session, data: bytes) -> None:
        partial = session.partial
        if partial is None:
            return  # a binary packet no Socket.IO packet announced: ignored, as MinitalkChat's server does
        packet, parts, size = partial
        size += len(data)
        if size > self.settings.max_packet_bytes:
            self.close_session(session, f"attachments over {self.settings.max_packet_bytes} bytes")
            return
        parts.append(data)
        if len(parts) < packet.attachments:
            session.partial = (packet, parts, size)
            return
        session.partial = None
        await self._dispatch(session, msgspec.structs.replace(packet, binary=tuple(parts)))

    async def _dispatch(self, session: Session, packet: socketio.SioPacket) -> None:
        namespace = packet.namespace
        if namespace == "/":
            app = self.app
            connected = session.sio_sid is not None
        else:
            app = self.apps.get(namespace)
            if app is None:
                if packet.type == SioType.CONNECT:
                    session.send(b"44" + namespace.encode() + b',{"message":"Invalid namespace"}')
                return
            connected = session.namespaces is not None and namespace in session.namespaces
        assert app is not None, "the service mounts the app before serving"
        kind = packet.type
        if kind == SioType.CONNECT:
            await app.on_connect(session, packet.data)
        elif kind == SioType.DISCONNECT:
            if namespace == "/":
                self.delivery.unsubscribe_all(session)
                session.sio_sid = None
            elif session.namespaces is not None:
                session.namespaces.discard(namespace)
        elif connected and kind != SioType.CONNECT_ERROR:
            try:
                await app.on_event(session, packet)
            except SocketIOError as exc:
                self.close_session(session, f"bad Socket.IO packet: {exc}")

    # -- outbound for apps ---------------------------------------------------------------------------
    def accept(self, session: Session, namespace: str = "/") -> str:
        """Accept a CONNECT to ``namespace``: the session is connected to it; returns the Socket.IO sid sent."""
        sid = secrets.token_urlsafe(15)
        if namespace == "/":
            session.sio_sid = sid
        else:
            if session.namespaces is None:
                session.namespaces = set()
            session.namespaces.add(namespace)
        reply = socketio.encode(SioType.CONNECT, '{"sid":"' + sid + '"}', namespace=namespace)
        session.send(b"4" + reply.encode())
        return sid

    def emit(
        self, session: Session, args: list[Any], *, namespace: str = "/", ack_id: int | None = None, ack: bool = False
    ) -> bool:
        """Send an EVENT with ``args`` (name first), or with ``ack`` the ACK ``ack_id`` with ``args``; ``bytes``
        anywhere in ``args`` go as attachments."""
        kind = SioType.ACK if ack else SioType.EVENT
        text, binary = socketio.encode_args(kind, args, ack_id=ack_id, namespace=namespace)
        sent = session.send(b"4" + text.encode())
        for data in binary:
            sent = session.send_binary(data) and sent
        return sent

    async def wait_flushed(self) -> None:
        """Return once every websocket outbox and polling queue is empty (acks and broadcasts delivered)."""
        # Polled: outboxes drain in the flusher and in each connection's writer; one stop does not need an Event.
        while any(session.pending_bytes for session in self.sessions.values()):  # noqa: ASYNC110
            await trio.sleep(0.01)

    def statistics(self) -> dict[str, int]:
        by_transport = {"websocket": 0, "polling": 0}
        outbox_bytes = largest = 0
        for session in self.sessions.values():
            by_transport[session.transport] += 1
            pending = session.pending_bytes
            outbox_bytes += session.ws.nbytes if session.ws is not None else 0
            largest = max(largest, pending)
        delivery = self.delivery
        deflate = self.compression.stats
        return {
            **by_transport,
            "outbox_bytes": outbox_bytes,
            "largest_outbox_bytes": largest,
            "rooms": delivery.rooms(),
            "lagging": delivery.lagging(),
            "catchup_backlog": delivery.backlog(),
            "messages_broadcast": self.messages_broadcast,
            "deliveries": delivery.messages_pushed + delivery.messages_caught_up,
            "deliveries_caught_up": delivery.messages_caught_up,
            "lag_episodes": delivery.lag_episodes,
            "ws_deflate": deflate.deflates,
            "ws_compressed_frames": deflate.compressed_frames,
        }

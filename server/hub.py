"""The realtime transport: Engine.IO sessions, their heartbeat and error boundary, Socket.IO packets.

It knows no chat: a session's Socket.IO CONNECTs and events go to the :class:`App` (``server/chat.py``), and
who receives a room's messages is :class:`~server.delivery.Delivery`'s business. Rooms there are
*subscriptions*, as Socket.IO rooms are; *membership* (who may send) lives in the room registry. They differ
on purpose (contract §3.2-3.4): a user who leaves by REST keeps receiving until ``leave_room`` or reconnect.
"""

from __future__ import annotations

import heapq
import logging
import math
import secrets
from typing import Literal, Protocol

import msgspec
import trio

from protocol import engineio, socketio
from protocol.engineio import OpenPayload, PacketType
from protocol.engineio_session import Beat
from protocol.errors import SocketIOError
from protocol.socketio import SioType
from server.delivery import Delivery
from server.metrics import Metrics
from server.outbox import Flusher
from server.rooms import RoomRegistry
from server.session import Session
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


class App(Protocol):
    """What the hub hands a session's Socket.IO CONNECTs and events to (server/chat.py)."""

    async def on_connect(self, session: Session, data: str) -> None: ...

    async def on_event(self, session: Session, packet: socketio.SioPacket) -> None: ...


class Hub:
    def __init__(self, settings: HubSettings, registry: RoomRegistry, metrics: Metrics, storage: StorageEngine) -> None:
        self.settings = settings
        self.metrics = metrics
        self.flusher = Flusher()
        self.sessions: dict[str, Session] = {}
        self.storage = storage
        self.delivery = Delivery(
            storage,
            registry.head,
            high_water=settings.catchup_high_water,
            page=settings.catchup_page,
            # Recovery offsets name places in the log: in fast mode members see messages before the log has them.
            offsets=settings.mode == "durable",
        )
        self._doomed: list[tuple[Session, str]] = []
        # The heartbeat timer: (when, n, session), at most one live entry per session (its timer_at);
        # entries whose time is not their session's timer_at are stale and skipped when they come up.
        self._timers: list[tuple[float, int, Session]] = []
        self._timer_count = 0
        self._timer_scope: trio.CancelScope | None = None
        self._reaper = trio.lowlevel.ParkingLot()
        self.app: App | None = None  # what CONNECTs and events are for (server/chat.py); set before serving
        self.messages_broadcast = 0

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
    def open_session(self, token: str | None, *, websocket: bool = False) -> Session | None:
        """A new Engine.IO session, or None when the connection limit is reached."""
        if len(self.sessions) >= self.settings.max_connections:
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
        self.sessions[session.sid] = session
        self._schedule(session)
        return session

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
        log.debug("session %s closed: %s", session.sid, session.close_reason)

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
        beat = session.tick(now, connected=session.sio_sid is not None or session.user is not None)
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
            await self._on_socketio(session, data)
        elif kind == PacketType.PONG:
            session.pong(trio.current_time())
            self._schedule(session)
        elif kind == PacketType.PING:
            session.send(b"3" + data.encode())
        elif kind == PacketType.CLOSE:
            self.close_session(session, "client closed", by_client=True)
        # OPEN, UPGRADE (handled by the websocket endpoint), NOOP and binary packets: nothing to do.

    async def _on_socketio(self, session: Session, text: str) -> None:
        try:
            packet = socketio.decode(text)
        except SocketIOError as exc:
            self.close_session(session, f"bad Socket.IO packet: {exc}")
            return
        if packet.namespace != "/":
            if packet.type == SioType.CONNECT:
                session.send(b"44" + packet.namespace.encode() + b',{"message":"Invalid namespace"}')
            return
        if packet.type == SioType.CONNECT:
            assert self.app is not None, "the service sets the app before serving"
            await self.app.on_connect(session, packet.data)
        elif packet.type == SioType.DISCONNECT:
            self.delivery.unsubscribe_all(session)
            session.sio_sid = None
        elif packet.type == SioType.EVENT and session.sio_sid is not None:
            assert self.app is not None
            await self.app.on_event(session, packet)

    async def wait_flushed(self) -> None:
        """Return once every websocket outbox and polling queue is empty (acks and broadcasts delivered)."""
        # Polled: outboxes drain in the flusher and in each connection's writer; one stop does not need an Event.
        while any(session.pending_bytes for session in self.sessions.values()):  # noqa: ASYNC110
            await trio.sleep(0.01)

    def statistics(self) -> dict[str, int]:
        by_transport = {"websocket": 0, "polling": 0}
        outbox_bytes = 0
        for session in self.sessions.values():
            by_transport[session.transport] += 1
            if session.ws is not None:
                outbox_bytes += session.ws.nbytes
        delivery = self.delivery
        return {
            **by_transport,
            "outbox_bytes": outbox_bytes,
            "rooms": delivery.rooms(),
            "lagging": delivery.lagging(),
            "messages_broadcast": self.messages_broadcast,
            "deliveries": delivery.messages_pushed + delivery.messages_caught_up,
            "deliveries_caught_up": delivery.messages_caught_up,
            "lag_episodes": delivery.lag_episodes,
        }

"""One Engine.IO session: its transport (polling queue or websocket outbox), heartbeat, and Socket.IO state.

Transport states: a session opened by a polling handshake starts on **polling**. A websocket that names
its sid **probes** (``2probe`` → ``3probe``); from then on the session is **upgrading**: a waiting poll is
released with a noop ``6`` (and any later poll gets one at once) so the client can send ``5``. On ``5`` the
session moves to **websocket**: what was queued for polling is flushed onto the socket, in order, and
every later packet goes there. A session opened by a websocket handshake starts on websocket.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from protocol import engineio
from protocol.ratelimit import TokenBucket
from protocol.websocket import close_frame, frame
from server.outbox import Outbox

MAX_PACKETS_PER_POLL = 16  # python-engineio rejects a payload of more than 16 packets (contract §3.6-6)


class Session:
    __slots__ = (
        "_poll_waiter",
        "_queue",
        "_queue_bytes",
        "close_reason",
        "closed",
        "connect_deadline",
        "created",
        "cursors",
        "inbound",
        "lagging",
        "max_queue_bytes",
        "max_queue_packets",
        "next_ping",
        "on_overflow",
        "pong_deadline",
        "send_bucket",
        "sid",
        "sio_sid",
        "token",
        "upgrading",
        "user",
        "ws",
        "ws_scope",
    )

    def __init__(
        self,
        sid: str,
        token: str | None,
        *,
        now: float,
        ping_interval: float,
        connect_timeout: float,
        max_queue_bytes: int,
        max_queue_packets: int,
        on_overflow: Callable[[Session, str], None],
    ) -> None:
        self.sid = sid
        self.token = token
        self.user: str | None = None
        self.sio_sid: str | None = None
        # Subscribed rooms → the last seq written to this session (owned by server/delivery.py).
        self.cursors: dict[str, int] = {}
        self.lagging = False  # catching up from the log instead of receiving live pushes (delivery.py)
        self.created = now
        self.next_ping = now + ping_interval
        self.pong_deadline: float | None = None
        self.connect_deadline = now + connect_timeout
        self.closed = False
        self.close_reason = ""
        self.inbound = trio.Lock()  # one connection's packets are handled in arrival order (§3.6-9)
        self.on_overflow = on_overflow
        # polling transport
        self._queue: deque[bytes] = deque()
        self._queue_bytes = 0
        self._poll_waiter: trio.Event | None = None
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_packets = max_queue_packets
        self.upgrading = False
        # websocket transport
        self.ws: Outbox | None = None
        self.ws_scope: trio.CancelScope | None = None
        # send_message rate limit (server/send_limit.py): made on the first send, so idle sessions cost nothing
        self.send_bucket: TokenBucket | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for the client and not yet written (0 once closed: nothing more will go out)."""
        if self.closed:
            return 0
        return self.ws.nbytes if self.ws is not None else self._queue_bytes

    @property
    def transport(self) -> str:
        return "websocket" if self.ws is not None else "polling"

    # -- sending -----------------------------------------------------------------------------------
    def send(self, packet: bytes, ws_frame: bytes | None = None) -> bool:
        """Queue one Engine.IO packet on the active transport; ``ws_frame`` is its frame if already built."""
        if self.closed:
            return False
        if self.ws is not None:
            return self.ws.push(ws_frame if ws_frame is not None else frame(packet))
        if self._queue_bytes + len(packet) > self.max_queue_bytes or len(self._queue) >= self.max_queue_packets:
            self.on_overflow(self, f"polling queue full ({self._queue_bytes} bytes in {len(self._queue)} packets)")
            return False
        self._queue.append(packet)
        self._queue_bytes += len(packet)
        self._wake_poll()
        return True

    def send_many(self, packets: list[bytes], ws_frames: bytes) -> bool:
        """Queue several packets at once; ``ws_frames`` is their websocket frames, concatenated.

        On a websocket that is one outbox entry and one write for the lot (a committed batch's messages to
        one room); a polling session queues them one by one, as its payload format needs.
        """
        if self.closed:
            return False
        if self.ws is not None:
            return self.ws.push(ws_frames)
        return all(self.send(packet) for packet in packets)

    def _wake_poll(self) -> None:
        if self._poll_waiter is not None:
            self._poll_waiter.set()

    # -- polling -----------------------------------------------------------------------------------
    @property
    def poll_pending(self) -> bool:
        return self._poll_waiter is not None

    async def poll(self) -> bytes:
        """Wait for packets (a ping comes at least every ping interval) and take up to 16 of them."""
        if not self._queue and not self.closed and not self.upgrading:
            self._poll_waiter = trio.Event()
            try:
                await self._poll_waiter.wait()
            finally:
                self._poll_waiter = None
        if self.closed and not self._queue:
            return engineio.CLOSE.encode()
        if not self._queue:
            return engineio.NOOP.encode()  # upgrading: release the poll so the client can send "5"
        packets = [self._queue.popleft() for _ in range(min(MAX_PACKETS_PER_POLL, len(self._queue)))]
        self._queue_bytes -= sum(len(p) for p in packets)
        return b"\x1e".join(packets)

    # -- upgrade -----------------------------------------------------------------------------------
    def begin_upgrade(self) -> None:
        self.upgrading = True
        self._wake_poll()

    def complete_upgrade(self, outbox: Outbox, scope: trio.CancelScope) -> None:
        """Switch to the websocket: what polling had queued goes first, in order."""
        while self._queue:
            outbox.push(frame(self._queue.popleft()))
        self._queue_bytes = 0
        self.ws = outbox
        self.ws_scope = scope
        self.upgrading = False

    def attach_websocket(self, outbox: Outbox, scope: trio.CancelScope) -> None:
        self.ws = outbox
        self.ws_scope = scope

    # -- closing -----------------------------------------------------------------------------------
    def close_transport(self, *, ws_code: int = 1000) -> None:
        """Mark closed and end the transport: a waiting poll gets ``1``, a websocket a close frame (§3.6-8)."""
        self.closed = True
        self._wake_poll()
        if self.ws is not None:
            self.ws.push_close(close_frame(ws_code))  # refused if the reader already sent one
            self.ws.drain_best_effort()
            self.ws.close()
        if self.ws_scope is not None:
            self.ws_scope.cancel()

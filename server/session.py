"""One Engine.IO session's I/O: its polling queue and waiting GET, its websocket outbox, and Socket.IO state.

The session's transport state (polling, probing, upgrading, websocket, closed), its heartbeat timers and its
polling rules belong to the sans-IO machine in ``protocol/engineio_session.py``, which this class extends:
nothing here sets them, it asks the machine and does what the answer says. (An extension, not a member:
``send`` reads ``closed`` per message per member in a fan-out, and one more attribute hop there is measurable.)
"""

from __future__ import annotations

import base64
import math
from collections import deque
from collections.abc import Callable

import trio

from protocol import engineio
from protocol.deflate import Deflater
from protocol.engineio_session import EngineIOSession, Poll, Upgrade
from protocol.ratelimit import TokenBucket
from protocol.socketio import SioPacket
from protocol.websocket import OP_BINARY, OP_TEXT, close_frame, frame
from server.outbox import Outbox

MAX_PACKETS_PER_POLL = 16  # python-engineio rejects a payload of more than 16 packets (contract §3.6-6)


class Session(EngineIOSession):
    __slots__ = (
        "_poll_waiter",
        "_queue",
        "_queue_bytes",
        "address",
        "created",
        "cursors",
        "inbound",
        "lagging",
        "max_queue_bytes",
        "max_queue_packets",
        "namespaces",
        "on_overflow",
        "partial",
        "send_bucket",
        "sid",
        "sio_sid",
        "timer_at",
        "token",
        "user",
        "ws",
        "ws_deflate",
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
        ping_timeout: float = 60.0,
        websocket: bool = False,
    ) -> None:
        super().__init__(
            now=now,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            connect_timeout=connect_timeout,
            websocket=websocket,
        )
        self.sid = sid
        self.token = token
        self.user: str | None = None
        self.sio_sid: str | None = None  # connected to the namespace "/" (its Socket.IO sid)
        self.namespaces: set[str] | None = None  # the other namespaces it is connected to (made on the first)
        # A binary packet waiting for its attachments, and those that have arrived (server/hub.py).
        self.partial: tuple[SioPacket, list[bytes], int] | None = None
        # Subscribed rooms → the last seq written to this session (owned by server/delivery.py).
        self.cursors: dict[str, int] = {}
        self.lagging = False  # catching up from the log instead of receiving live pushes (delivery.py)
        self.created = now
        self.address: str | None = None  # the peer's IP address, for the connection lifecycle log
        self.timer_at = math.inf  # when the hub's heartbeat timer will next look at this session (server/hub.py)
        self.inbound = trio.Lock()  # one connection's packets are handled in arrival order (§3.6-9)
        self.on_overflow = on_overflow
        # polling transport
        self._queue: deque[bytes] = deque()
        self._queue_bytes = 0
        self._poll_waiter: trio.Event | None = None
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_packets = max_queue_packets
        # websocket transport
        self.ws: Outbox | None = None
        self.ws_scope: trio.CancelScope | None = None
        # permessage-deflate, when the websocket agreed on it (protocol/deflate.py): what frames its messages.
        self.ws_deflate: Deflater | None = None
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
            if ws_frame is None:
                ws_frame = _framed(packet, self.ws_deflate)
            return self.ws.push(ws_frame)
        if self._queue_bytes + len(packet) > self.max_queue_bytes or len(self._queue) >= self.max_queue_packets:
            self.on_overflow(self, f"polling queue full ({self._queue_bytes} bytes in {len(self._queue)} packets)")
            return False
        self._queue.append(packet)
        self._queue_bytes += len(packet)
        self._wake_poll()
        return True

    def send_binary(self, data: bytes) -> bool:
        """Queue one binary Engine.IO packet: a binary frame, or ``b<base64>`` on polling."""
        if self.ws is not None and not self.closed:
            return self.ws.push(_framed(data, self.ws_deflate, OP_BINARY))
        return self.send(b"b" + base64.b64encode(data))

    def send_many(self, packets: list[bytes], ws_frames: bytes) -> bool:
        """Queue several packets at once; ``ws_frames`` is their websocket frames, concatenated.

        On a websocket that is one outbox entry and one write for the lot (a committed batch's messages to
        one room); a polling session queues them one by one, as its payload format needs. The frames are
        sent as given: a broadcast picks the compressed ones for a member that agreed on permessage-deflate
        (server/delivery.py), anything else may go plain (RFC 7692 lets a sender choose per message).
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
    async def poll(self) -> bytes:
        """Answer a polling GET: wait for packets (a ping comes at least every ping interval), take up to 16.

        Raises :class:`PollRefused` when the machine refuses the GET (the caller answers 400).
        """
        action = self.poll_begin(queued=bool(self._queue))
        if action is Poll.WAIT:
            try:
                while action is Poll.WAIT:
                    self._poll_waiter = trio.Event()
                    await self._poll_waiter.wait()
                    action = self.poll_woken(queued=bool(self._queue))
            finally:
                self._poll_waiter = None
                self.poll_end()
        if action is Poll.SERVE:
            packets = [self._queue.popleft() for _ in range(min(MAX_PACKETS_PER_POLL, len(self._queue)))]
            self._queue_bytes -= sum(len(p) for p in packets)
            return b"\x1e".join(packets)
        if action is Poll.NOOP:
            return engineio.NOOP.encode()
        if action is Poll.CLOSE:
            return engineio.CLOSE.encode()
        raise PollRefused(action)

    # -- upgrade -----------------------------------------------------------------------------------
    def on_upgrade_packet(
        self, text: str, outbox: Outbox, scope: trio.CancelScope, deflate: Deflater | None = None
    ) -> Upgrade:
        """A text packet on the probing websocket ``outbox``; the shell's half of :meth:`upgrade_packet`.

        ``deflate``: the probing websocket agreed on permessage-deflate.
        """
        step = self.upgrade_packet(text)
        if step is Upgrade.PROBED:
            outbox.push(frame(engineio.PONG_PROBE.encode()))
        elif step is Upgrade.UPGRADED:
            # What polling had queued goes first, in order; a waiting poll is released with a noop.
            while self._queue:
                packet = self._queue.popleft()
                outbox.push(_framed(packet, deflate))
            self._queue_bytes = 0
            self.ws = outbox
            self.ws_scope = scope
            self.ws_deflate = deflate
        self._wake_poll()
        return step

    def attach_websocket(self, outbox: Outbox, scope: trio.CancelScope, deflate: Deflater | None = None) -> None:
        """The outbox of a session opened by a websocket handshake (``deflate``: it agreed on permessage-deflate)."""
        self.ws = outbox
        self.ws_scope = scope
        self.ws_deflate = deflate

    # -- closing -----------------------------------------------------------------------------------
    def close_transport(self) -> None:
        """End the transport of a closed session: a waiting poll is released, a websocket gets a close frame."""
        self._wake_poll()
        if self.ws is not None:
            self.ws.push_close(close_frame(1000))  # refused if the reader already sent one
            self.ws.drain_best_effort()
            self.ws.close()
        if self.ws_scope is not None:
            self.ws_scope.cancel()


class PollRefused(Exception):
    """The session refused a polling GET; ``action`` says why (server/polling.py answers 400)."""

    def __init__(self, action: Poll) -> None:
        super().__init__(action.value)
        self.action = action


def _framed(payload: bytes, deflate: Deflater | None, opcode: int = OP_TEXT) -> bytes:
    """One message's websocket frame: compressed over the threshold when the websocket agreed on it, else plain."""
    return frame(payload, opcode) if deflate is None else deflate.frame(payload, opcode)

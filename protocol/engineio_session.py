"""The Engine.IO v4 session state machine, sans-IO: every change of a session's transport state is here.

Theory of operation
-------------------
A session is in one of five states::

    POLLING ──ws names sid──▶ PROBING ──2probe──▶ UPGRADING ──5──▶ WEBSOCKET
       ▲                         │                    │
       └──── the probing websocket fails or closes ───┘
    any state ──close()──▶ CLOSED   (and never leaves it)

A session opened by a websocket handshake starts on WEBSOCKET. The I/O shell (``server/session.py``) feeds
the machine what happened, with the time where time matters, and does what the answer says; it never sets
the state itself. Nothing here awaits, sleeps or reads a clock: ``now`` is an argument, so the heartbeat is
tested synchronously, thousands of transitions a second.

- **Polling GET** (:meth:`poll_begin`): served at once when packets are queued, released with a noop ``6``
  while upgrading, refused on websocket or when another GET is already waiting (engine.io closes the
  session then), else it waits; the shell asks :meth:`poll_woken` when woken and calls :meth:`poll_end` when
  the request ends, however it ends.
- **Upgrade** (:meth:`websocket_opened`, :meth:`upgrade_packet`, :meth:`websocket_closed`), as engine.io's
  ``Socket.maybeUpgrade``: a second websocket for a session that is already upgrading or upgraded is
  accepted and closed by the shell (a client sees a close, not a refused handshake). Any packet on the
  probing websocket other than ``2probe`` then ``5`` fails the upgrade; the session stays on polling.
- **Heartbeat** (:meth:`tick`, :meth:`pong`, :meth:`next_deadline`), as engine.io's ``lib/socket.ts``:
  the first ping is due ``ping_interval`` after the open, a ping is answered within ``ping_timeout``, the
  next ping is due ``ping_interval`` after the pong. Socket.IO's ``connectTimeout`` starts at the Engine.IO
  open and ends at the Socket.IO CONNECT.
- **Close** (:meth:`close`): the first reason wins. A GET still waiting gets ``6`` when the client closed
  (engine.io's ``Polling.onClose``) and ``1`` when the server did (``Polling.doClose``).

The machine raises only :class:`SessionStateError`, for a call that makes no sense in the current state
(a bug in the shell, not the peer's fault).
"""

from __future__ import annotations

import enum
import math

from protocol.errors import EngineIOError

UPGRADE = "5"


class SessionStateError(EngineIOError):
    """The shell asked for something the session's state does not allow."""


class State(enum.Enum):
    POLLING = "polling"
    PROBING = "probing"  # a websocket named this session; waiting for its 2probe; polls carry on
    UPGRADING = "upgrading"  # 3probe sent; polls are released with a noop until the client sends 5
    WEBSOCKET = "websocket"
    CLOSED = "closed"


class Poll(enum.Enum):
    """What to do with a polling GET."""

    SERVE = "serve"  # answer with up to 16 queued packets now
    WAIT = "wait"  # hold the request until the shell wakes it
    NOOP = "noop"  # answer 6
    CLOSE = "close"  # answer 1
    TWO_POLLS = "two polls at once"  # the session is closed: answer 400 Bad request
    WRONG_TRANSPORT = "wrong transport"  # the session is on websocket: answer 400 Bad request
    GONE = "gone"  # the session is closed: answer 400 Session ID unknown


class Upgrade(enum.Enum):
    """What to do with a text packet on the probing websocket."""

    PROBED = "probed"  # send 3probe; release a waiting poll
    UPGRADED = "upgraded"  # move the polling queue onto the websocket; release a waiting poll
    FAILED = "failed"  # close the probing websocket; the session stays on polling


class Beat(enum.Enum):
    """What a heartbeat tick asks for."""

    NOTHING = "nothing"
    PING = "ping"  # send a ping packet
    CLOSED = "closed"  # the session timed out: close_reason says which timer


_PROBE = "2probe"


class EngineIOSession:
    __slots__ = (
        "close_reason",
        "closed",
        "closed_by_client",
        "connect_deadline",
        "next_ping",
        "ping_interval",
        "ping_timeout",
        "poll_pending",
        "pong_deadline",
        "state",
    )

    def __init__(
        self, *, now: float, ping_interval: float, ping_timeout: float, connect_timeout: float, websocket: bool
    ) -> None:
        self.state = State.WEBSOCKET if websocket else State.POLLING
        self.closed = False  # state is CLOSED; a plain bool because the send hot path reads it per message
        self.close_reason = ""
        self.closed_by_client = False
        self.poll_pending = False
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.next_ping = now + ping_interval
        self.pong_deadline: float | None = None
        self.connect_deadline: float | None = now + connect_timeout

    # -- closing -----------------------------------------------------------------------------------
    def close(self, reason: str, *, by_client: bool = False) -> bool:
        """Enter CLOSED; False if it already was (the first reason stays)."""
        if self.closed:
            return False
        self.state = State.CLOSED
        self.closed = True
        self.close_reason = reason
        self.closed_by_client = by_client
        self.pong_deadline = self.connect_deadline = None
        return True

    # -- heartbeat ---------------------------------------------------------------------------------
    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (inf once closed)."""
        if self.closed:
            return math.inf
        due = self.next_ping if self.pong_deadline is None else self.pong_deadline
        return due if self.connect_deadline is None else min(due, self.connect_deadline)

    def tick(self, now: float, *, connected: bool) -> Beat:
        """The timers at ``now``; ``connected`` is whether a Socket.IO CONNECT was accepted."""
        if self.closed:
            return Beat.NOTHING
        if self.connect_deadline is not None:
            if connected:
                self.connect_deadline = None
            elif now >= self.connect_deadline:
                self.close("no Socket.IO CONNECT in time")
                return Beat.CLOSED
        if self.pong_deadline is not None:
            if now >= self.pong_deadline:
                self.close("ping timeout")
                return Beat.CLOSED
            return Beat.NOTHING
        if now >= self.next_ping:
            self.pong_deadline = now + self.ping_timeout
            return Beat.PING
        return Beat.NOTHING

    def pong(self, now: float) -> None:
        """A pong: the outstanding ping is answered; the next is due one interval from now."""
        if not self.closed:
            self.pong_deadline = None
            self.next_ping = now + self.ping_interval

    # -- polling -----------------------------------------------------------------------------------
    def poll_begin(self, *, queued: bool) -> Poll:
        """A polling GET arrived; ``queued`` is whether packets wait for it."""
        if self.closed:
            return Poll.GONE
        if self.state is State.WEBSOCKET:
            return Poll.WRONG_TRANSPORT
        if self.poll_pending:
            self.close("two polls at once")
            return Poll.TWO_POLLS
        if queued:
            return Poll.SERVE
        if self.state is State.UPGRADING:
            return Poll.NOOP  # release the client so it can send 5 (contract §3.5)
        self.poll_pending = True
        return Poll.WAIT

    def poll_woken(self, *, queued: bool) -> Poll:
        """The waiting GET was woken: serve, release (noop or close) or keep waiting."""
        if not self.poll_pending:
            raise SessionStateError("no polling GET is waiting")
        if queued:
            return Poll.SERVE
        if self.closed:
            return Poll.NOOP if self.closed_by_client else Poll.CLOSE
        if self.state is State.UPGRADING or self.state is State.WEBSOCKET:
            return Poll.NOOP
        return Poll.WAIT

    def poll_end(self) -> None:
        """The waiting GET ended (answered, or the HTTP request went away)."""
        self.poll_pending = False

    # -- upgrade -----------------------------------------------------------------------------------
    def websocket_opened(self) -> bool:
        """A websocket handshake named this session: True to probe, False to accept and close it."""
        if self.state is not State.POLLING:
            return False
        self.state = State.PROBING
        return True

    def upgrade_packet(self, text: str) -> Upgrade:
        """A text packet on the probing websocket."""
        if self.state is State.PROBING and text == _PROBE:
            self.state = State.UPGRADING
            return Upgrade.PROBED
        if self.state is State.UPGRADING and text == UPGRADE:
            self.state = State.WEBSOCKET
            return Upgrade.UPGRADED
        self.websocket_closed(upgraded=False)
        return Upgrade.FAILED

    def websocket_closed(self, *, upgraded: bool) -> None:
        """The probing websocket ended before ``5`` (``upgraded`` False): back to polling."""
        if not upgraded and self.state in (State.PROBING, State.UPGRADING):
            self.state = State.POLLING

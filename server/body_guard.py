"""ASGI middleware between hypercorn and the app: a deadline on every request body, and keep-alive
connections that stay usable when the app answers before it has read the body.

Why a response sent before the body was read used to hang the connection (hypercorn 0.17/0.18 under
quart-trio; a stock quart-trio app does the same): when the app's last ``send`` ends the response while the
client is still sending the body, hypercorn's h11 protocol sees our side DONE and theirs SEND_BODY, cannot
recycle, and closes the socket from inside that very ``send`` (``TCPServer._close``). The same call first
puts ``http.disconnect`` on the app's queue; quart-trio's ``handle_messages`` task receives it and cancels
its nursery, which cancels the ``send`` half-way through ``_close`` (at ``send_eof``'s checkpoint). The socket
stays open, hypercorn's reader keeps feeding h11 a body whose stream is gone, and once the body ends h11 is
PAUSED waiting for a recycle that never comes. The keep-alive timer was stopped when the request arrived,
so nothing ever times out: the next request on that connection is never answered. The same cancellation
hit every ordinary keep-alive response too: hypercorn restarts its keep-alive timer inside that send, after
the cancellation point, so idle connections were never closed (measured: a 5 s keep-alive timeout, the
connection still open after 12 s; with the shield below it closes at 5.0 s).

Theory of operation, per HTTP request:

- The final ``send`` of a response is shielded, so hypercorn's recycle or close always runs to its end.
- A response that starts while the body is still arriving either
  * keeps the connection (the rest is announced by ``Content-Length`` and is at most ``drain_limit`` bytes:
    a 401/403 or a polling error on an ordinary request): the response's bytes go out at once, and only
    its end (which writes nothing for a ``Content-Length`` response) waits until the rest of the body has
    been read and thrown away, bounded by the body deadline. h11 then sees both sides DONE and the
    connection carries the next request, as Node does (it dumps an unread body); or
  * closes the connection (chunked, or more than ``drain_limit`` left: a 413): the response carries
    ``Connection: close``, so a client never sends a second request on it.
- Body deadline: the whole body must arrive within ``body_timeout`` seconds of the request head (a client
  that sends headers and then trickles its body held a connection and a descriptor for as long as it liked).
  Past it the app is cancelled and the client gets 408 with ``Connection: close`` (or, if the response had
  already started, the connection is closed after it). Reading ``http.disconnect`` after the body is
  complete has no deadline: a long-poll waits there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]


class BodyGuard:
    """Wraps an ASGI app; ``on_timeout`` is called once per request whose body missed its deadline."""

    def __init__(
        self, app: App, *, body_timeout: float, drain_limit: int, on_timeout: Callable[[], None] = lambda: None
    ) -> None:
        self._app = app
        self.body_timeout = body_timeout
        self.drain_limit = drain_limit
        self.on_timeout = on_timeout

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        with exchange.app_scope:
            await self._app(scope, exchange.receive, exchange.send)
        if exchange.timed_out:
            await exchange.end_after_timeout()


def _body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The declared Content-Length (None if absent or invalid) and whether the body is chunked."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif lowered == b"transfer-encoding":
            chunked = True
    return length, chunked


class _Exchange:
    """One request and its response, as the guard sees them."""

    def __init__(self, guard: BodyGuard, scope: Message, receive: Receive, send: Send) -> None:
        self._guard = guard
        self._receive = receive
        self._send = send
        self._length, self._chunked = _body_framing(list(scope.get("headers", ())))
        self._received = 0
        self._body_done = trio.Event()
        if not self._chunked and not self._length:
            self._body_done.set()  # no body: nothing to wait for, nothing to drain
        self._deadline = trio.current_time() + guard.body_timeout
        self.app_scope = trio.CancelScope()
        self.timed_out = False
        self._started = False
        self._finished = False
        self._closing = False

    async def receive(self) -> Message:
        """The app's receive: body messages under the deadline, ``http.disconnect`` without one."""
        if self._body_done.is_set():
            return await self._receive()
        with trio.move_on_at(self._deadline):
            return await self._take()
        if self._body_done.is_set():  # the drain read the rest meanwhile: only http.disconnect is left to wait for
            return await self._receive()
        self._expire()
        await trio.sleep_forever()  # the app's scope is cancelled: this raises Cancelled at once
        raise AssertionError("unreachable")  # pragma: no cover

    async def _take(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._body_done.set()
        elif message["type"] == "http.disconnect":
            self._body_done.set()  # nothing more will come
        return message

    def _expire(self) -> None:
        if not self.timed_out:
            self.timed_out = True
            self._guard.on_timeout()
        self.app_scope.cancel()

    def _drainable(self) -> bool:
        if self._chunked or self._length is None:
            return False
        return self._length - self._received <= self._guard.drain_limit

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._started = True
            if not self._body_done.is_set() and not self._drainable():
                self._closing = True
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await self._send(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            await self._finish(message)
        else:
            await self._send(message)

    async def _finish(self, message: Message) -> None:
        if not self._body_done.is_set() and not self._closing:
            if message.get("body"):
                await self._send({**message, "more_body": True})  # the client has the whole response now
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            with trio.move_on_at(self._deadline):
                await self._drain()
            if not self._body_done.is_set():
                self._expire()  # the connection closes: h11 cannot recycle with the body unfinished
        await self._send_last(message)

    async def _drain(self) -> None:
        """Read and discard the rest of the body; the app may be reading it at the same time."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._discard)
            await self._body_done.wait()
            nursery.cancel_scope.cancel()

    async def _discard(self) -> None:
        while not self._body_done.is_set():
            await self._take()

    async def _send_last(self, message: Message) -> None:
        # Shielded: this send is where hypercorn recycles or closes the connection, and an app that cancels
        # itself on http.disconnect (quart-trio) would otherwise interrupt the close half-way. The body is
        # discarded meanwhile so hypercorn's reader is never stuck on a full app queue.
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                if not self._body_done.is_set():
                    nursery.start_soon(self._discard)
                await self._send(message)
                nursery.cancel_scope.cancel()
        self._finished = True

    async def end_after_timeout(self) -> None:
        """After the app was cancelled for a late body: a 408 if nothing was sent, else end the response."""
        if self._finished:
            return
        if not self._started:
            body = msgspec.json.encode(
                {"error": f"Request body timeout: the body did not arrive within {self._guard.body_timeout:g} s"}
            )
            self._closing = True
            with trio.CancelScope(shield=True):
                await self._send(
                    {
                        "type": "http.response.start",
                        "status": 408,
                        "headers": [
                            (b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"access-control-allow-origin", b"*"),
                            (b"connection", b"close"),
                        ],
                    }
                )
            await self._send_last({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await self._send_last({"type": "http.response.body", "body": b"", "more_body": False})

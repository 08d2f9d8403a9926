"""The front door: one port for REST, Engine.IO polling and websocket.

Each accepted connection's request head is read with h11. A websocket upgrade on the Socket.IO path goes
to the raw-stream hot path (:mod:`server.ws_endpoint`); everything else, bytes read so far included, goes
to hypercorn and the quart-trio app. The decision merges repeated ``Connection`` headers first, as Node
does (contract §3.6-2), which wsproto's and h11's own upgrade checks would not.

The accept loop is ours rather than ``trio.serve_listeners``: when descriptors run out, trio's logs an
error with a traceback every 100 ms (the hardening issue counted 1,368 lines in one 40 s episode), while
ours logs one line per episode, counts every failure in ``minitalk_accept_errors_total``, backs off
exponentially, and accepts again by itself once descriptors free up. It also enforces
``--max-connections-per-ip`` before reading anything.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable, Mapping, Sequence

import h11
import trio

from protocol.websocket import is_upgrade
from server.http_handoff import HttpHandoff
from server.metrics import Metrics
from server.ws_endpoint import WebSocketEndpoint

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 30.0  # a client that opens a connection and sends no request head within this is dropped
MAX_HEAD_BYTES = 16 * 1024  # the request line and headers; h11 refuses anything larger


def _closing_json(status: bytes, body: bytes) -> bytes:
    """A complete HTTP/1.1 error response that ends the connection, its length counted rather than typed."""
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n\r\n"
        + body
    )


_BAD_REQUEST = _closing_json(b"400 Bad Request", b'{"error":"Malformed HTTP request"}')
_TOO_MANY = _closing_json(b"503 Service Unavailable", b'{"error":"Too many connections from this address"}')
# accept() fails with these when the process or the system is out of descriptors or buffer memory. The
# pending connection stays in the backlog, so retrying at once would only spin: we back off instead.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_MIN_S = 0.01  # the first retry: a closing connection often frees a descriptor within ms
ACCEPT_BACKOFF_MAX_S = 1.0  # the longest wait between retries, so recovery is noticed within a second


class FrontDoor:
    """``max_per_ip``: open connections one peer address may hold (0: no limit). ``on_error``: the last error
    boundary's report of an exception no connection handler caught."""

    def __init__(
        self,
        http: HttpHandoff,
        websocket: WebSocketEndpoint,
        *,
        on_error: Callable[[BaseException], None],
        socketio_path: str = "/socket.io",
        metrics: Metrics | None = None,
        max_per_ip: int = 0,
        more_websockets: Mapping[str, WebSocketEndpoint] | None = None,
    ) -> None:
        self._on_error = on_error
        self._http = http
        # Upgrade paths (no trailing slash) → their endpoint: Socket.IO's, and other hubs' (more_websockets).
        self._websockets = {socketio_path.rstrip("/").encode(): websocket} | {
            path.rstrip("/").encode(): endpoint for path, endpoint in (more_websockets or {}).items()
        }
        self._metrics = metrics or Metrics()
        self._max_per_ip = max_per_ip
        self._per_ip: dict[str, int] = {}

    async def serve(self, listeners: Sequence[trio.SocketListener], handler_nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handler_nursery)

    async def _accept_loop(self, listener: trio.SocketListener, handler_nursery: trio.Nursery) -> None:
        backoff = 0.0
        failures = 0
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._metrics.accept_errors.labels(errno.errorcode[exc.errno]).inc()
                if failures == 0:  # one line per episode; the counter has every failure
                    log.warning(
                        "accept() failed: %s; retrying with backoff up to %g s until descriptors free up",
                        exc,
                        ACCEPT_BACKOFF_MAX_S,
                    )
                failures += 1
                backoff = min(ACCEPT_BACKOFF_MAX_S, max(ACCEPT_BACKOFF_MIN_S, backoff * 2))
                await trio.sleep(backoff)
                continue
            if failures:
                log.debug("accept() works again after %d failures", failures)
                failures, backoff = 0, 0.0
            handler_nursery.start_soon(self._run_handler, stream)

    async def _run_handler(self, stream: trio.SocketStream) -> None:
        try:
            peer = str(stream.socket.getpeername()[0])
        except OSError:  # the client is already gone
            await trio.aclose_forcefully(stream)
            return
        if self._max_per_ip and self._per_ip.get(peer, 0) >= self._max_per_ip:
            self._metrics.rate_limits_hit.labels("connections_per_ip").inc()
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.send_all(_TOO_MANY)  # best effort: it fits in the socket buffer, the peer may be gone
            await trio.aclose_forcefully(stream)
            return
        self._per_ip[peer] = self._per_ip.get(peer, 0) + 1
        try:
            await self.handle(stream)
        finally:
            left = self._per_ip.pop(peer) - 1
            if left:
                self._per_ip[peer] = left
            await trio.aclose_forcefully(stream)

    def open_connections(self, peer: str) -> int:
        """Connections open from ``peer`` right now."""
        return self._per_ip.get(peer, 0)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One accepted connection, behind the last error boundary: nothing it raises reaches the server."""
        try:
            await self._handle(stream)
        except Exception as exc:
            self._on_error(exc)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            head = await self._read_head(stream)
        except (h11.RemoteProtocolError, UnicodeDecodeError):
            with trio.move_on_after(1):
                await stream.send_all(_BAD_REQUEST)
            await stream.aclose()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.aclose()
            return
        if head is None:
            await stream.aclose()
            return
        request, raw, trailing = head
        endpoint = self._websocket_for(request)
        if endpoint is not None:
            await endpoint.serve(stream, request, trailing)
        else:
            await self._http.serve(stream, raw)

    def _websocket_for(self, request: h11.Request) -> WebSocketEndpoint | None:
        endpoint = self._websockets.get(request.target.split(b"?", 1)[0].rstrip(b"/"))
        if endpoint is None or not is_upgrade(request.method, request.headers.raw_items()):
            return None
        return endpoint

    async def _read_head(self, stream: trio.SocketStream) -> tuple[h11.Request, bytes, bytes] | None:
        """The request head, every byte read so far, and the bytes after the head; None on EOF or timeout."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        raw = bytearray()
        with trio.move_on_after(HEAD_TIMEOUT_S):
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Request):
                    return event, bytes(raw), conn.trailing_data[0]
                if event is not h11.NEED_DATA:
                    return None
                data = await stream.receive_some(65536)
                if not data:
                    return None
                raw += data
                conn.receive_data(data)
        return None

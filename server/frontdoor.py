"""The front door: one port for REST, Engine.IO polling and websocket.

Each accepted connection's request head is read with h11. A websocket upgrade on the Socket.IO path goes
to the raw-stream hot path (:mod:`server.ws_endpoint`); everything else, bytes read so far included, goes
to hypercorn and the quart-trio app. The decision merges repeated ``Connection`` headers first, as Node
does (contract §3.6-2), which wsproto's and h11's own upgrade checks would not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import h11
import trio

from protocol.websocket import is_upgrade
from server.http_handoff import HttpHandoff
from server.ws_endpoint import WebSocketEndpoint

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 30.0  # a client that opens a connection and sends no request head within this is dropped
MAX_HEAD_BYTES = 16 * 1024  # the request line and headers; h11 refuses anything larger
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 33\r\n"
    b"Connection: close\r\n\r\n"
    b'{"error":"Malformed HTTP request"}'
)


class FrontDoor:
    def __init__(
        self,
        http: HttpHandoff,
        websocket: WebSocketEndpoint,
        *,
        on_error: Callable[[BaseException], None],
        socketio_path: str = "/socket.io",
    ) -> None:
        self._on_error = on_error
        self._http = http
        self._websocket = websocket
        self._path = socketio_path.rstrip("/").encode()

    async def serve(self, listeners: Sequence[trio.SocketListener], handler_nursery: trio.Nursery) -> None:
        await trio.serve_listeners(self.handle, list(listeners), handler_nursery=handler_nursery)

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
        if self._is_socketio_websocket(request):
            await self._websocket.serve(stream, request, trailing)
        else:
            await self._http.serve(stream, raw)

    def _is_socketio_websocket(self, request: h11.Request) -> bool:
        path = request.target.split(b"?", 1)[0].rstrip(b"/")
        return path == self._path and is_upgrade(request.method, request.headers.raw_items())

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

"""``--metrics-port``: ``GET /metrics`` on a port of its own, so the public port does not expose it.

Operators scrape from inside the cluster and publish only the chat port; with a metrics port set, the chat port
answers ``/metrics`` with 404. One request per connection (Prometheus opens a new one per scrape or keeps
one alive; either works, closing after each answer keeps this small), parsed with h11, bounded in size and time
so a stray client cannot hold a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h11
import trio

log = logging.getLogger(__name__)

# A scrape request is one short head; anything longer or slower is not Prometheus.
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsPort:
    def __init__(self, render: Callable[[], bytes], host: str, port: int) -> None:
        self._render = render
        self._host = host
        self._port = port

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port once listening."""
        listeners = await trio.open_tcp_listeners(self._port, host=self._host)
        port = int(listeners[0].socket.getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self._host, port)
        task_status.started(port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                try:
                    await self._answer(stream)
                except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
                    log.debug("metrics request failed: %s", exc)

    async def _answer(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                if not data:
                    return
                conn.receive_data(data)
                continue
            break
        if not isinstance(event, h11.Request):
            return
        path = event.target.split(b"?", 1)[0]
        if event.method not in (b"GET", b"HEAD"):
            status, body, kind = 405, b"only GET /metrics here\n", b"text/plain; charset=utf-8"
        elif path != b"/metrics":
            status, body, kind = 404, b"only GET /metrics here\n", b"text/plain; charset=utf-8"
        else:
            status, body, kind = 200, self._render(), CONTENT_TYPE.encode()
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if event.method != b"HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)

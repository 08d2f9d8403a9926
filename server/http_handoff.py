"""Hands plain HTTP connections to hypercorn's trio protocol stack, after the front door has looked at them.

This replaces ``hypercorn.trio.serve``'s listener loop (which would own the port) with two calls: ``run``
does the ASGI lifespan (Quart's startup and shutdown), and ``serve`` runs hypercorn's ``TCPServer`` on a
stream the front door accepted. The bytes the front door already read are replayed first. It uses
hypercorn's trio internals (``TCPServer``, ``Lifespan``, ``WorkerContext``), so pyproject pins hypercorn to
the minor versions this was written against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypercorn.config
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from server.body_guard import BodyGuard


class ReplayStream(trio.abc.Stream):
    """A socket stream whose first reads return bytes already consumed from it."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket  # hypercorn reads peer and local addresses from here

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _InFlight:
    """ASGI wrapper counting HTTP requests in progress, so a shutdown can tell busy from idle connections.

    Why: hypercorn keeps an idle keep-alive connection open until its keep-alive timeout even after a
    graceful shutdown began (stock ``hypercorn.trio.serve`` does the same), which held every shutdown for
    the whole ``shutdown_timeout``. Knowing that no request is running, we can close the rest at once.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self.count = 0
        self._idle = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        self.count += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()
                self._idle = trio.Event()

    async def wait_idle(self) -> None:
        while self.count:
            await self._idle.wait()


class HttpHandoff:
    """``body_timeout`` (seconds) and ``drain_limit`` (bytes): see :mod:`server.body_guard`."""

    def __init__(
        self,
        app: Any,
        config: hypercorn.config.Config,
        *,
        body_timeout: float = 30.0,
        drain_limit: int = 1024 * 1024,
        on_body_timeout: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        guarded = BodyGuard(app, body_timeout=body_timeout, drain_limit=drain_limit, on_timeout=on_body_timeout)
        self._requests = _InFlight(guarded)
        asgi_app: Any = self._requests  # an ASGI 3 callable; hypercorn's type names its scope TypedDicts
        self._app = wrap_app(asgi_app, config.wsgi_max_body_size, "asgi")
        self._context = WorkerContext(None)
        self._state: dict[str, Any] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The app's lifespan: started before the first request, shut down after the last."""
        lifespan = Lifespan(self._app, self._config, self._state)
        async with trio.open_nursery() as nursery:
            await nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(self._config.graceful_timeout):
                    await lifespan.wait_for_shutdown()
                nursery.cancel_scope.cancel()

    async def begin_shutdown(self) -> None:
        """Tell open keep-alive connections to finish their request and close."""
        await self._context.terminated.set()

    async def wait_requests_done(self) -> None:
        """Return once no HTTP request is in progress (idle keep-alive connections may remain)."""
        await self._requests.wait_idle()

    async def serve(self, stream: trio.SocketStream, already_read: bytes) -> None:
        replay: Any = ReplayStream(stream, already_read)  # hypercorn types it as SSLStream; a Stream suffices
        server = TCPServer(self._app, self._config, self._context, ConnectionState(self._state.copy()), replay)
        await server.run()

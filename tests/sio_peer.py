"""The MinitalkChat load test's client library (python-socketio, sync, websocket-client 1.6.4), driven from trio."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import socketio
import trio

from tests.conftest import bearer

EVENTS = ("message", "error", "joined_room", "left_room")


class Peer:
    """One python-socketio ``Client``, exactly as the load test builds it; blocking calls run in threads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = socketio.Client(reconnection=False, logger=False, engineio_logger=False)
        self._lock = threading.Lock()
        self.events: list[tuple[str, Any]] = []
        self.disconnected = threading.Event()
        for event in EVENTS:
            self.sio.on(event, self._recorder(event))
        self.sio.on("disconnect", lambda *_: self.disconnected.set())

    def _recorder(self, event: str) -> Callable[[Any], None]:
        def record(data: Any) -> None:
            with self._lock:
                self.events.append((event, data))

        return record

    def received(self, event: str) -> list[Any]:
        with self._lock:
            return [data for name, data in self.events if name == event]

    async def connect(
        self, url: str, token: str, *, transports: list[str] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        # The load test's call: the token in the URL query, plus its extra "Connection: keep-alive" header.
        def connect() -> None:
            self.sio.connect(
                f"{url}?token={token}",
                headers=headers or {"Connection": "keep-alive"},
                transports=transports,
                wait_timeout=10,
            )

        await trio.to_thread.run_sync(connect)

    async def emit(self, event: str, data: Any) -> None:
        await trio.to_thread.run_sync(self.sio.emit, event, data)

    async def call(self, event: str, data: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: self.sio.call(event, data, timeout=10))

    async def disconnect(self) -> None:
        await trio.to_thread.run_sync(self.sio.disconnect)

    async def close(self) -> None:
        """Disconnect if connected, and close the client's HTTP session (python-engineio leaves it open)."""
        if self.sio.connected:
            await self.disconnect()
        if self.sio.eio.state != "disconnected":  # a failed namespace connect leaves Engine.IO up
            await trio.to_thread.run_sync(lambda: self.sio.eio.disconnect(abort=True))
        ws = getattr(self.sio.eio, "ws", None)
        if ws is not None:
            # websocket-client's close() skips closing the socket once it thinks it is disconnected.
            ws.shutdown()
        http = getattr(self.sio.eio, "http", None)
        if http is not None:
            http.close()

    @property
    def transport(self) -> str:
        return str(self.sio.transport())


async def wait_until(condition: Callable[[], bool], *, within: float = 15.0) -> None:
    """Poll a condition; fail the test if it is not met in time (a hang guard, not a speed assertion)."""
    with trio.fail_after(within):
        # Polling, not an Event: the condition is changed by python-socketio's own threads.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def make_users(http: httpx.AsyncClient, names: list[str]) -> dict[str, str]:
    users = [{"username": n, "password": "pw"} for n in names]
    r = await http.post("/api/auth/signup-batch", json={"users": users})
    assert r.status_code == 201, r.text
    r = await http.post("/api/auth/login-batch", json={"users": users})
    return {entry["username"]: entry["token"] for entry in r.json()["results"]}


async def make_room(http: httpx.AsyncClient, token: str, members: list[str], name: str = "room") -> str:
    r = await http.post("/api/chatrooms", json={"name": name, "participants": members}, headers=bearer(token))
    assert r.status_code == 201, r.text
    room_id: str = r.json()["roomId"]
    return room_id

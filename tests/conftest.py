"""Shared fixtures: a real minitalk-trio server listening on 127.0.0.1, and an HTTP client for it."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
import trio

from server.config import Config
from server.service import MinitalkServer

if TYPE_CHECKING:  # tests.sio_peer imports this module
    from tests.sio_peer import Peer

# postgres_cluster (one per session) and pg_url (a fresh database per test).
pytest_plugins = ["tests.pg_fixtures"]

# bcrypt's cheapest cost: tests that are not about the cost itself should not spend seconds hashing.
FAST_BCRYPT = 4


def make_config(db_path: Path, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "port": 0,
        "database": f"sqlite:///{db_path}",  # tmp_path is absolute, so this is sqlite:////abs/path
        "bcrypt_rounds": FAST_BCRYPT,
        "bcrypt_batch_rounds": FAST_BCRYPT,
        "shutdown_timeout": 5.0,
    }
    settings.update(overrides)
    return Config(**settings)


class RunningServer:
    """A server started in the test's own Trio loop; ``url`` is its base URL."""

    def __init__(self, server: MinitalkServer, port: int, done: trio.Event) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._done = done

    async def stop(self) -> None:
        self.server.request_shutdown()
        with trio.fail_after(10):  # the graceful stop is bounded by shutdown_timeout (5 s) plus slack
            await self._done.wait()


async def start_server(nursery: trio.Nursery, config: Config) -> RunningServer:
    return await run_server(nursery, MinitalkServer(config))


async def run_server(nursery: trio.Nursery, server: MinitalkServer) -> RunningServer:
    """Run an already built server (a conformance app, say) in the test's loop until its ``stop``."""
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await server.run(task_status=task_status)
        finally:
            done.set()

    port: int = await nursery.start(run)
    return RunningServer(server, port, done)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "minitalk.db"


@pytest.fixture
async def running(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_server(nursery, make_config(db_path))
    yield server
    await server.stop()


@pytest.fixture
async def client(running: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        yield http


async def signup_and_login(http: httpx.AsyncClient, username: str, password: str = "pw") -> str:
    """Create a user and return a token for it."""
    r = await http.post("/api/auth/signup", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    r = await http.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def decode_token(token: str, secret: str = "your-secret-key") -> dict[str, Any]:
    """Decode a JWT with PyJWT directly (independent of our Tokens class), quiet about the short default key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"])
    return claims


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    """python-socketio peers a test makes (append them); all closed afterwards."""
    created: list[Peer] = []
    yield created
    for peer in created:
        await peer.close()

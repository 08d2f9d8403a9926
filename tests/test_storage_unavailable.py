"""Storage that fails for a while (another process holds the SQLite write lock): 503 + Retry-After, not ready,
and the service resumes by itself once the lock is released."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from server.health import Health
from storage.errors import StorageUnavailableError
from storage.sqlite.engine import SqliteEngine
from tests.conftest import RunningServer, bearer, make_config, start_server

# The engine waits this long for the lock before giving up; the test holds it far longer (until released),
# so every write in between fails however slow the machine is.
BUSY_TIMEOUT_S = 0.05


@contextmanager
def write_lock_held(db: Path) -> Iterator[None]:
    """Another connection, as another process would, holding the database's write lock until exit."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.fixture
async def locked_server(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[RunningServer]:
    config = make_config(db_path, database=f"sqlite:///{db_path}?busy_timeout={BUSY_TIMEOUT_S}", storage_retry_after=3)
    server = await start_server(nursery, config)
    yield server
    await server.stop()


async def test_locked_storage_is_503_and_not_ready_then_recovers(locked_server: RunningServer, db_path: Path) -> None:
    async with httpx.AsyncClient(base_url=locked_server.url, timeout=30) as http:
        assert (await http.get("/ready")).status_code == 200
        r = await http.post("/api/auth/signup", json={"username": "owner", "password": "pw"})
        token = (await http.post("/api/auth/login", json={"username": "owner", "password": "pw"})).json()["token"]

        with write_lock_held(db_path):
            r = await http.post("/api/auth/signup", json={"username": "alice", "password": "pw"})
            assert (r.status_code, r.json()) == (503, {"error": "Storage temporarily unavailable, try again"})
            assert r.headers["Retry-After"] == "3"
            r = await http.post("/api/chatrooms", json={"name": "r"}, headers=bearer(token))
            assert r.status_code == 503 and r.headers["Retry-After"] == "3"
            assert (await http.get("/api/chatrooms", headers=bearer(token))).json() == [], "the room was undone"
            r = await http.get("/ready")
            assert r.status_code == 503
            assert r.json()["status"] == "NOT READY"
            assert "database is locked" in r.json()["message"]
            assert (await http.get("/health")).status_code == 200, "liveness: the process still answers"
            # Reads still work (WAL: readers never wait for the writer), and they do not claim recovery.
            assert (await http.post("/api/auth/login", json={"username": "owner", "password": "pw"})).is_success
            assert (await http.get("/ready")).status_code == 503

        # Released: the next write goes through and readiness follows, with no restart and no operator.
        r = await http.post("/api/auth/signup", json={"username": "alice", "password": "pw"})
        assert r.status_code == 201, r.text
        assert (await http.get("/ready")).json() == {"status": "OK", "message": "MiniTalk Backend is ready"}


async def test_ready_probes_storage_by_itself(locked_server: RunningServer, db_path: Path) -> None:
    """No request after the lock is gone (a load balancer sends none to a not-ready server): /ready recovers."""
    async with httpx.AsyncClient(base_url=locked_server.url, timeout=30) as http:
        with write_lock_held(db_path):
            r = await http.post("/api/auth/signup", json={"username": "alice", "password": "pw"})
            assert r.status_code == 503
            assert (await http.get("/ready")).status_code == 503, "the probe itself still fails"
        assert (await http.get("/ready")).status_code == 200


async def test_ready_is_503_while_shutting_down(locked_server: RunningServer) -> None:
    locked_server.server.health.shutting_down()
    async with httpx.AsyncClient(base_url=locked_server.url, timeout=30) as http:
        r = await http.get("/ready")
    assert (r.status_code, r.json()) == (503, {"status": "NOT READY", "message": "MiniTalk Backend is shutting down"})


async def test_engine_translates_sqlite_errors(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    engine = SqliteEngine(str(path), busy_timeout=BUSY_TIMEOUT_S)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.check_writable()
        with write_lock_held(path), pytest.raises(StorageUnavailableError, match="database is locked"):
            await engine.check_writable()
        await engine.check_writable()  # the failed transaction left nothing open behind it
        nursery.cancel_scope.cancel()


def test_health_transitions() -> None:
    health = Health()
    assert (health.ready, health.reason) == (True, "")
    health.storage_failed("disk I/O error")
    health.storage_failed("database is locked")  # the latest reason wins; idempotent
    assert (health.ready, health.reason) == (False, "Storage is failing: database is locked")
    health.storage_recovered()
    health.storage_recovered()
    assert health.ready
    health.shutting_down()
    health.storage_recovered()
    assert (health.ready, health.reason) == (False, "MiniTalk Backend is shutting down")

"""Global HTTP behaviour (contract §1.0): health, CORS, unknown routes, bad bodies, and no stack traces."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import RunningServer, bearer, make_config, signup_and_login, start_server


@pytest.mark.parametrize(
    ("path", "message"), [("/health", "MiniTalk Backend is running"), ("/ready", "MiniTalk Backend is ready")]
)
async def test_health_and_ready(client: httpx.AsyncClient, path: str, message: str) -> None:
    r = await client.get(path)
    assert (r.status_code, r.json()) == (200, {"status": "OK", "message": message})
    head = await client.head(path)
    assert head.status_code == 200 and head.content == b""


async def test_every_response_allows_any_origin(client: httpx.AsyncClient) -> None:
    for r in (await client.get("/health"), await client.get("/api/chatrooms"), await client.get("/nowhere")):
        assert r.headers["access-control-allow-origin"] == "*"


async def test_preflight(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/api/chatrooms",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE"
    assert r.headers["access-control-allow-headers"] == "authorization,content-type"


@pytest.mark.parametrize(("method", "path"), [("GET", "/nowhere"), ("DELETE", "/api/chatrooms"), ("PUT", "/health")])
async def test_unknown_route_is_json_404(client: httpx.AsyncClient, method: str, path: str) -> None:
    r = await client.request(method, path)
    assert r.status_code == 404
    assert r.json() == {"error": f"Cannot {method} {path}"}


@pytest.mark.parametrize("payload", [b"{bad", b'{"username": "a",', b"\xff\xfe", b'"just a string"', b"42"])
async def test_bad_json_is_400_json(client: httpx.AsyncClient, payload: bytes) -> None:
    r = await client.post("/api/auth/signup", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["error"], str)


async def test_json_array_body_counts_as_missing_fields(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/auth/signup", json=["alice", "pw"])
    assert (r.status_code, r.json()) == (400, {"error": "Username and password are required"})


async def test_oversize_body_is_413_and_server_keeps_serving(nursery: trio.Nursery, db_path: Path) -> None:
    running: RunningServer = await start_server(nursery, make_config(db_path, max_body_bytes=4096))
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        big = {"username": "a" * 10_000, "password": "p"}
        r = await http.post("/api/auth/signup", json=big)
        assert r.status_code == 413
        assert r.json() == {"error": "Request body too large: the limit is 4096 bytes"}
        assert (await http.post("/api/auth/signup", json={"username": "a", "password": "p"})).status_code == 201
    await running.stop()


async def test_internal_errors_are_json_without_details(
    client: httpx.AsyncClient, running: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = await signup_and_login(client, "alice")

    async def broken(*_: object) -> None:
        raise RuntimeError("disk on fire")

    # The thing under test is the error boundary, so the storage write is made to fail on purpose.
    monkeypatch.setattr(running.server.storage, "insert_rooms", broken)
    r = await client.post("/api/chatrooms", json={"name": "r"}, headers=bearer(token))
    assert (r.status_code, r.json()) == (500, {"error": "Internal server error"})
    assert "disk on fire" not in r.text
    assert "disk on fire" in caplog.text, "the cause is logged for the operator"
    assert (await client.get("/api/chatrooms", headers=bearer(token))).json() == [], "the failed room was undone"


async def test_idle_keep_alive_connection_does_not_hold_shutdown(nursery: trio.Nursery, db_path: Path) -> None:
    # shutdown_timeout is 60 s; the hang guard is 30 s. Stopping within the guard means the server did not
    # wait out the timeout for a connection that had no request in progress (stock hypercorn would).
    running: RunningServer = await start_server(nursery, make_config(db_path, shutdown_timeout=60.0))
    async with httpx.AsyncClient(base_url=running.url) as http:
        assert (await http.get("/health")).status_code == 200  # leaves an idle keep-alive connection
        running.server.request_shutdown()
        with trio.fail_after(30):
            await running._done.wait()

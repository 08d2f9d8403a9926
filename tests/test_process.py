"""``python -m server`` as users run it: help, config errors, SIGTERM, and data surviving a restart."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import trio

from tests.conftest import bearer
from tests.server_process import ROOT, start_server_process


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_help_documents_every_option_with_units() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--database", "--log-level", "--max-body-bytes", "--shutdown-timeout"):
        assert flag in result.stdout
    for env in ("PORT", "DATABASE_URL", "JWT_SECRET"):
        assert f"env {env}" in result.stdout
    assert "bytes" in result.stdout and "seconds" in result.stdout


def test_bad_config_exits_2_with_a_message() -> None:
    result = run_cli("--port", "99999")
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr and "Traceback" not in result.stderr


def test_an_outbox_bound_below_what_catch_up_needs_is_a_config_error() -> None:
    result = run_cli("--outbox-max-bytes", "100000")
    assert result.returncode == 2
    assert "catchup_high_water" in result.stderr and "Traceback" not in result.stderr


def test_unsupported_database_exits_1_with_a_message() -> None:
    result = run_cli("--database", "mysql://localhost/x")
    assert result.returncode == 1
    assert "not supported" in result.stderr and "Traceback" not in result.stderr


def test_a_database_from_a_newer_server_exits_1_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    result = run_cli("--database", f"sqlite:///{db}")
    assert result.returncode == 1
    assert "upgrade the server" in result.stderr and "Traceback" not in result.stderr


async def test_sigterm_stops_gracefully_and_data_survives_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/restart.db"
    args = ["--database", db, "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4"]
    first = await start_server_process(nursery, args)
    assert b"JWT_SECRET is not set" in first.log, "the default secret is warned about at start"
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
        await http.post("/api/auth/signup", json={"username": "alice", "password": "pw"})
        await http.post("/api/auth/signup-batch", json={"users": [{"username": "bob", "password": "pw"}]})
        token = (await http.post("/api/auth/login", json={"username": "alice", "password": "pw"})).json()["token"]
        room = (
            await http.post("/api/chatrooms", json={"name": "kept", "participants": ["bob"]}, headers=bearer(token))
        ).json()
        await http.post(
            f"/api/chatrooms/{room['roomId']}/invite", json={"participants": ["carol"]}, headers=bearer(token)
        )
        gone = (await http.post("/api/chatrooms", json={"name": "gone"}, headers=bearer(token))).json()
        await http.post(f"/api/chatrooms/{gone['roomId']}/leave", headers=bearer(token))
    assert await first.terminate() == 0
    assert b"shutting down gracefully" in first.log and b"stopped" in first.log

    second = await start_server_process(nursery, args)
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
        r = await http.post("/api/auth/login", json={"username": "bob", "password": "pw"})
        assert r.status_code == 200
        rooms = (await http.get("/api/chatrooms", headers=bearer(r.json()["token"]))).json()
        assert [(x["roomId"], x["name"], x["participants"]) for x in rooms] == [
            (room["roomId"], "kept", ["alice", "bob", "carol"])
        ]
        r = await http.get(f"/api/chatrooms/{gone['roomId']}/messages", headers=bearer(token))
        assert r.status_code == 404, "the room deleted on last leave stays deleted"
    assert await second.terminate() == 0


async def test_custom_secret_is_used(nursery: trio.Nursery, tmp_path: Path) -> None:
    secret = "a-production-secret-that-is-long-enough"
    server = await start_server_process(
        nursery, ["--database", f"sqlite:///{tmp_path}/s.db", "--bcrypt-rounds", "4"], env={"JWT_SECRET": secret}
    )
    assert b"JWT_SECRET is not set" not in server.log
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await http.post("/api/auth/signup", json={"username": "a", "password": "p"})
        token = (await http.post("/api/auth/login", json={"username": "a", "password": "p"})).json()["token"]
        assert jwt.decode(token, secret, algorithms=["HS256"])["username"] == "a"
    assert await server.terminate() == 0

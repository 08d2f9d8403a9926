"""Operator safety: the admin routes' three modes, the login limits, and the per-connection send limit."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from protocol.ratelimit import KeyedBuckets, LoginGuard, TokenBucket, retry_after
from tests.conftest import RunningServer, bearer, make_config, signup_and_login, start_server
from tests.server_process import ROOT, start_server_process
from tests.sio_peer import Peer, make_room, make_users, wait_until

ADMIN_TOKEN = "an-admin-token-for-tests"
USERS_CODE = {"confirmationCode": "DELETE_ALL_USERS_CONFIRM"}
MESSAGES_CODE = {"confirmationCode": "DELETE_ALL_MESSAGES_CONFIRM"}


async def serve(nursery: trio.Nursery, db_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    server = await start_server(nursery, make_config(db_path, **overrides))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http
    await server.stop()


# -- admin routes ------------------------------------------------------------------------------------
@pytest.fixture
async def token_mode(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in serve(nursery, db_path, admin_routes="token", admin_token=ADMIN_TOKEN):
        yield http


@pytest.fixture
async def off_mode(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in serve(nursery, db_path, admin_routes="off"):
        yield http


@pytest.mark.parametrize("path", ["/api/auth/delete-all-users", "/api/messages/delete-all"])
async def test_token_mode_needs_the_admin_token(token_mode: httpx.AsyncClient, path: str) -> None:
    http = token_mode
    user_jwt = await signup_and_login(http, "alice")
    code = USERS_CODE if "users" in path else MESSAGES_CODE
    refused = "Admin token required: this server runs with --admin-routes token"
    for headers in ({}, bearer(user_jwt), bearer(ADMIN_TOKEN + "x"), {"Authorization": ADMIN_TOKEN}):
        r = await http.request("DELETE", path, json=code, headers=headers)
        assert (r.status_code, r.json()) == (403, {"error": refused}), headers
    r = await http.request("DELETE", path, json=code, headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    assert r.json()["deletedCount"] == (1 if "users" in path else 0)


@pytest.mark.parametrize("path", ["/api/auth/delete-all-users", "/api/messages/delete-all"])
async def test_off_mode_answers_as_an_unknown_route(off_mode: httpx.AsyncClient, path: str) -> None:
    jwt = await signup_and_login(off_mode, "alice")
    code = USERS_CODE if "users" in path else MESSAGES_CODE
    r = await off_mode.request("DELETE", path, json=code, headers=bearer(jwt))
    assert (r.status_code, r.json()) == (404, {"error": f"Cannot DELETE {path}"})
    assert (await off_mode.post("/api/auth/login", json={"username": "alice", "password": "pw"})).status_code == 200


async def test_open_mode_is_the_originals_and_warns_loudly(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server_process(nursery, ["--database", f"sqlite:///{tmp_path}/s.db", "--bcrypt-rounds", "4"])
    assert b"WARNING" in server.log and b"ADMIN_ROUTES=open" in server.log
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        r = await http.request("DELETE", "/api/auth/delete-all-users", json=USERS_CODE)  # no token at all
        assert r.status_code == 200
    assert await server.terminate() == 0


async def test_token_mode_does_not_warn(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server_process(
        nursery,
        ["--database", f"sqlite:///{tmp_path}/s.db", "--admin-routes", "token"],
        env={"ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert b"ADMIN_ROUTES=open" not in server.log
    assert await server.terminate() == 0


def test_token_mode_without_a_token_is_a_config_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "--admin-routes", "token"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "needs an admin token" in result.stderr and "Traceback" not in result.stderr


# -- login limits ------------------------------------------------------------------------------------
@pytest.fixture
async def limited(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in serve(nursery, db_path, login_attempts=3, login_ip_attempts=6, login_window=600):
        yield http


async def test_failed_logins_per_username_are_limited_before_bcrypt(limited: httpx.AsyncClient) -> None:
    http = limited
    await signup_and_login(http, "alice", "right")
    for _ in range(3):
        r = await http.post("/api/auth/login", json={"username": "alice", "password": "wrong"})
        assert r.status_code == 401
    r = await http.post("/api/auth/login", json={"username": "alice", "password": "right"})
    assert (r.status_code, r.json()) == (429, {"error": "Too many login attempts, try again later"})
    # 3 per 600 s refills one attempt in 200 s: the client is told when trying again is worth it.
    assert 1 <= int(r.headers["Retry-After"]) <= 200
    # Another user from the same address is not locked out by alice's guesser (3 failures < 6 per IP).
    await signup_and_login(http, "bob")
    r = await http.post("/api/auth/login-batch", json={"users": [{"username": n, "password": "right"} for n in "ab"]})
    assert r.status_code == 200
    assert r.json()["errors"] == [
        {"username": "a", "error": "User not found"},
        {"username": "b", "error": "User not found"},
    ]


async def test_login_batch_limits_per_name_and_once_per_request_per_ip(limited: httpx.AsyncClient) -> None:
    http = limited
    tokens = await make_users(http, ["alice", "bob", "carol"])  # successful logins never count
    assert len(tokens) == 3
    wrong = {"users": [{"username": n, "password": "wrong"} for n in ("alice", "bob", "carol")]}
    for _ in range(3):  # 3 requests: 3 against the IP (not 9), 3 against each name
        r = await http.post("/api/auth/login-batch", json=wrong)
        assert r.status_code == 200
    r = await http.post("/api/auth/login-batch", json={"users": [{"username": "alice", "password": "pw"}]})
    assert r.status_code == 200, "the IP has 3 of its 6"
    assert r.json()["errors"] == [{"username": "alice", "error": "Too many login attempts, try again later"}]
    for _ in range(3):  # unknown names fail too, and count against the IP
        await http.post("/api/auth/login", json={"username": "nobody", "password": "x"})
    r = await http.post("/api/auth/login-batch", json={"users": [{"username": "dave", "password": "pw"}]})
    assert r.status_code == 429 and "Retry-After" in r.headers


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0) == 0.5
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert bucket.take(100) and bucket.tokens == 2, "refills up to the burst, no further"
    assert bucket.take(99) and bucket.tokens == 1, "a clock that steps back refills nothing"
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0, burst=1, now=0)


def test_keyed_buckets_forget_and_stay_bounded() -> None:
    buckets = KeyedBuckets(attempts=2, window=10, max_keys=100)
    buckets.charge("a", 0)
    buckets.charge("a", 0)
    assert buckets.wait("a", 0) == 5.0 and buckets.wait("b", 0) == 0.0
    buckets.charge("b", 1)
    assert len(buckets) == 2
    buckets.charge("c", 11)  # a is full again by t=10, b by t=6: both forgotten
    assert len(buckets) == 1
    for i in range(1000):
        buckets.charge(f"k{i}", 12)
    assert len(buckets) == 100, "past max_keys the least recently charged go first"
    assert retry_after(0.01) == 1 and retry_after(4.2) == 5


def test_login_guard_zero_turns_a_limit_off() -> None:
    guard = LoginGuard(attempts=0, ip_attempts=1, window=60)
    guard.failed("1.2.3.4", ["alice"] * 50, 0)
    assert guard.user_wait("alice", 0) == 0.0 and guard.ip_wait("1.2.3.4", 0) == 60.0
    assert guard.table_sizes() == (0, 1)


# -- per-connection send rate ------------------------------------------------------------------------
@pytest.fixture
async def slow_rate(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[RunningServer]:
    # A burst of 3 refilled one token per 1000 s: no test run is slow enough to see a refill.
    server = await start_server(nursery, make_config(db_path, message_rate=0.001, message_burst=3))
    yield server
    await server.stop()


async def test_send_rate_limit_over_websocket(slow_rate: RunningServer) -> None:
    refusal = "Rate limit exceeded: at most 0.001 messages per second per connection"
    async with httpx.AsyncClient(base_url=slow_rate.url, timeout=30) as http:
        tokens = await make_users(http, ["alice"])
        room = await make_room(http, tokens["alice"], [])
        peer = Peer("alice")
        try:
            await peer.connect(slow_rate.url, tokens["alice"], transports=["websocket"])
            acks = [await peer.call("send_message", {"roomId": room, "content": f"m{i}"}) for i in range(5)]
            assert [ack["ok"] for ack in acks] == [True, True, True, False, False]
            assert acks[3:] == [{"ok": False, "error": refusal}] * 2
            await peer.emit("send_message", {"roomId": room, "content": "no ack asked"})
            await wait_until(lambda: len(peer.received("error")) == 3)
            assert peer.received("error") == [{"message": refusal}] * 3, "the contract's error event"
            r = await http.get(f"/api/chatrooms/{room}/messages", headers=bearer(tokens["alice"]))
            assert [row["content"] for row in r.json()] == ["m0", "m1", "m2"], "refused messages are not stored"
            metrics = (await http.get("/metrics")).text
            assert 'minitalk_rate_limits_hit_total{kind="message"} 3.0' in metrics
        finally:
            await peer.close()


async def test_each_connection_has_its_own_budget(slow_rate: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=slow_rate.url, timeout=30) as http:
        tokens = await make_users(http, ["alice"])
        room = await make_room(http, tokens["alice"], [])
        peers = [Peer("alice"), Peer("alice")]
        try:
            for peer in peers:
                await peer.connect(slow_rate.url, tokens["alice"], transports=["websocket"])
                acks = [await peer.call("send_message", {"roomId": room, "content": "x"}) for _ in range(4)]
                assert [ack["ok"] for ack in acks] == [True, True, True, False]
        finally:
            for peer in peers:
                await peer.close()

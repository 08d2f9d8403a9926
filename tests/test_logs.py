"""Logs: JSON lines with context, one line per connection lifecycle and per REST request, repeats rate-limited."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import trio

from server.logs import JsonFormatter, RepeatFilter
from server.metrics import disconnect_kind
from tests.conftest import RunningServer, bearer
from tests.raw_client import raw_client
from tests.server_process import start_server_process
from tests.sio_peer import make_room, make_users


def record(msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("server.test", level, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_context_that_is_known() -> None:
    line = json.loads(JsonFormatter().format(record("hello %s", logging.INFO, user="ann", session="s1")))
    assert line["level"] == "info" and line["logger"] == "server.test" and line["message"] == "hello %s"
    assert (line["user"], line["session"]) == ("ann", "s1")
    assert "room" not in line and line["ts"].endswith("Z") and len(line["ts"]) == len("2026-12-04T22:00:00.000Z")


def test_repeated_warnings_are_let_through_a_few_times_per_window() -> None:
    now = [0.0]
    limit = RepeatFilter(burst=2, window=10.0, clock=lambda: now[0])
    passed = [limit.filter(record("storage down: %s")) for _ in range(5)]
    assert passed == [True, True, False, False, False]
    assert limit.filter(record("another warning")), "each template counts on its own"
    assert all(limit.filter(record("connect", logging.INFO)) for _ in range(50)), "info is never limited"
    now[0] = 11.0
    again = record("storage down: %s")
    assert limit.filter(again) and "3 similar suppressed" in str(again.msg)


async def test_a_json_log_has_one_line_per_connection_and_request_and_none_per_message(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server_process(
        nursery, ["--database", f"sqlite:///{tmp_path / 'l.db'}", "--bcrypt-rounds", "4", "--log-format", "json"]
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, ["ann"])
        room = await make_room(http, tokens["ann"], [])
        assert (await http.get(f"/api/chatrooms/{room}/messages", headers=bearer(tokens["ann"]))).status_code == 200
    async with raw_client(server.url, tokens["ann"]) as client:
        for i in range(30):
            await client.emit("send_message", {"roomId": room, "content": f"m{i}"}, ack_id=i)
        with trio.fail_after(10):
            while (await client.next_event())[0] != "ack:29":
                pass
    assert await server.terminate() == 0
    lines = [json.loads(line) for line in server.log.decode().splitlines() if line.strip()]
    connects = [line for line in lines if line["message"].startswith("connect:")]
    disconnects = [line for line in lines if line["message"].startswith("disconnect:") and line.get("user") == "ann"]
    assert len(connects) == 1 and connects[0]["user"] == "ann" and connects[0]["address"] == "127.0.0.1"
    assert len(disconnects) == 1 and disconnects[0]["session"] == connects[0]["session"]
    assert disconnects[0]["reason"] and disconnects[0]["duration_s"] >= 0
    access = [line for line in lines if line["logger"] == "server.access"]
    assert {(line["method"], line["path"], line["status"]) for line in access} >= {
        ("POST", "/api/auth/signup-batch", 201),
        ("GET", "/api/chatrooms/<room_id>/messages", 200),
    }
    assert all(line["duration_s"] >= 0 for line in access)
    assert not [line for line in lines if "m1" in line["message"]], "no line per chat message"
    assert len(lines) < 40, "a handful of lines for 30 messages"


async def test_metrics_expose_process_gc_and_build_info(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    for series in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_gc_collections_total"):
        assert f"\n{series}" in text, series
    [build] = [line for line in text.splitlines() if line.startswith("minitalk_build_info{")]
    assert 'version="0.1.0"' in build and "commit=" in build


def test_disconnect_reasons_map_to_a_few_kinds() -> None:
    assert disconnect_kind("client went away") == "client_closed"
    assert disconnect_kind("websocket closed by client") == "client_closed"
    assert disconnect_kind("ping timeout") == "timeout"
    assert disconnect_kind("bad Socket.IO packet: unexpected end of input") == "protocol_error"
    assert disconnect_kind("slow consumer: outbox over 4194304 bytes") == "slow_consumer"
    assert disconnect_kind("server shutting down") == "shutdown"
    assert disconnect_kind("internal error: KeyError") == "internal_error"
    assert disconnect_kind("something new") == "other"


def sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_metrics_count_auth_failures_disconnects_and_requests_by_route(
    running: RunningServer, client: httpx.AsyncClient
) -> None:
    tokens = await make_users(client, ["ann"])
    room = await make_room(client, tokens["ann"], [])
    assert (await client.post("/api/auth/login", json={"username": "ann", "password": "wrong"})).status_code == 401
    async with raw_client(running.url, "not-a-token", connect=False) as bad:
        await bad.ws.send_message("40")
        assert await bad.packet() == '44{"message":"Authentication error"}'
    async with raw_client(running.url, tokens["ann"]):
        pass
    await client.get(f"/api/chatrooms/{room}/messages", headers=bearer(tokens["ann"]))
    closed = 'minitalk_disconnects_total{reason="client_closed"}'
    with trio.fail_after(10):
        while closed not in (text := (await client.get("/metrics")).text):  # noqa: ASYNC110 -- another task's
            await trio.sleep(0.05)
    assert sample(text, 'minitalk_auth_failures_total{kind="login"}') == 1
    assert sample(text, 'minitalk_auth_failures_total{kind="socket"}') == 1
    assert (
        sample(
            text, 'minitalk_http_requests_total{method="GET",route="/api/chatrooms/<room_id>/messages",status="200"}'
        )
        == 1
    )
    assert "minitalk_largest_outbox_bytes " in text

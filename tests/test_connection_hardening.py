"""Connections that misbehave or outlive their welcome: early responses on keep-alive connections, slow
bodies, idle keep-alive, per-address connection limits, and running out of descriptors.

Timeouts here are set to fractions of a second so the tests are quick; every wait is a hang guard
(``trio.fail_after``) many times longer than the timeout it waits for, never a timing assertion.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from server.body_guard import BodyGuard
from server.config import OPTIONS, load_config
from tests.conftest import RunningServer, make_config, start_server
from tests.server_process import start_server_process

GUARD_S = 20.0  # the hang guard: far above every timeout configured below (at most 0.5 s)
SECOND = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


def post_head(path: bytes, length: int, content_type: bytes = b"application/json") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close)."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


async def read_responses(stream: trio.SocketStream, data: bytearray, count: int) -> bool:
    """Read into ``data`` until it holds ``count`` complete responses (True) or the server closed (False)."""
    while len(_split_responses(bytes(data))) < count:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return False
        if not chunk:
            return False
        data += chunk
    return True


def _split_responses(data: bytes) -> list[bytes]:
    responses = []
    while (end := data.find(b"\r\n\r\n")) >= 0:
        match = re.search(rb"(?i)content-length: *(\d+)", data[:end])
        total = end + 4 + (int(match.group(1)) if match else 0)
        if len(data) < total:
            break
        responses.append(data[:total])
        data = data[total:]
    return responses


async def metric(url: str, line_prefix: str) -> float:
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(url + "/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)]
    return sum(values)


@pytest.fixture
async def small(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[RunningServer]:
    """A server with a 4 KiB body limit and half-second body and keep-alive timeouts."""
    config = make_config(db_path, max_body_bytes=4096, body_timeout=0.5, keep_alive_timeout=0.5)
    server = await start_server(nursery, config)
    yield server
    await server.stop()


# -- item 3: a response sent before the body was read -------------------------------------------------------

EARLY_RESPONSES: dict[str, tuple[bytes, bytes, bool]] = {
    # name: (head, body, send the body only after the response arrived)
    "401 before a small body": (post_head(b"/api/chatrooms", 13), b'{"name":"r"}\n', True),
    "413 over the limit": (post_head(b"/api/auth/signup", 2_000_000), b" " * 2_000_000, False),
    "polling, unknown sid": (
        post_head(b"/socket.io/?EIO=4&transport=polling&sid=nope", 4, b"text/plain"),
        b"40{}",
        True,
    ),
}


@pytest.mark.parametrize("case", list(EARLY_RESPONSES))
async def test_raw_second_request_after_an_early_response_is_answered_or_closed(
    small: RunningServer, case: str
) -> None:
    head, body, after = EARLY_RESPONSES[case]
    stream = await trio.open_tcp_stream("127.0.0.1", small.port)
    async with stream, trio.open_nursery() as nursery:

        async def client_sends() -> None:
            try:
                await stream.send_all(head)
                if after:
                    await first_seen.wait()
                await stream.send_all(body + SECOND)
            except trio.BrokenResourceError:
                pass  # the server closed first: allowed when the first response said Connection: close

        first_seen = trio.Event()
        nursery.start_soon(client_sends)
        data = bytearray()
        with trio.fail_after(GUARD_S):
            answered = await read_responses(stream, data, 1)
            first_seen.set()
            answered = answered and await read_responses(stream, data, 2)
        responses = _split_responses(bytes(data))
        assert responses and not responses[0].startswith(b"HTTP/1.1 2"), data[:200]
        if not answered:
            # A close is clean only if the first response announced it, so no client sends a request into it.
            assert b"connection: close" in responses[0].lower()
        else:
            assert responses[1].startswith(b"HTTP/1.1 200"), responses[1]


async def test_httpx_second_request_on_the_same_connection_after_401(small: RunningServer) -> None:
    # The body arrives in two parts with a pause between: the 401 is sent before the second part is read.
    part = b'{"name":"room"}'

    async def slow_body() -> AsyncIterator[bytes]:
        yield part[:5]
        await trio.sleep(0.1)
        yield part[5:]

    headers = {"Content-Length": str(len(part)), "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=small.url, timeout=GUARD_S) as http:
        with trio.fail_after(GUARD_S):
            r = await http.post("/api/chatrooms", content=slow_body(), headers=headers)
            assert r.status_code == 401 and "connection" not in r.headers  # kept alive
            assert small.server.front_door.open_connections("127.0.0.1") == 1
            assert (await http.get("/health")).status_code == 200
        assert small.server.front_door.open_connections("127.0.0.1") == 1, "the same connection answered"


async def test_httpx_reconnects_after_413(small: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=small.url, timeout=GUARD_S) as http:
        with trio.fail_after(GUARD_S):
            r = await http.post("/api/auth/signup", json={"username": "a" * 10_000, "password": "p"})
            assert r.status_code == 413 and r.headers["connection"] == "close"
            assert (await http.get("/health")).status_code == 200


# -- item 4: slow bodies, idle keep-alive --------------------------------------------------------------------


async def test_a_stalled_body_gets_408_and_the_connection_closes(small: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", small.port)
    async with stream:
        await stream.send_all(post_head(b"/api/auth/signup", 100) + b'{"user')
        with trio.fail_after(GUARD_S):
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"connection: close" in data.lower()
    assert data.endswith(b'{"error":"Request body timeout: the body did not arrive within 0.5 s"}')
    assert await metric(small.url, "minitalk_http_body_timeouts_total") == 1


async def test_a_body_trickled_after_an_early_response_is_cut_too(small: RunningServer) -> None:
    # 401 needs no body, so the response goes out first; the rest of the body never comes.
    stream = await trio.open_tcp_stream("127.0.0.1", small.port)
    async with stream:
        await stream.send_all(post_head(b"/api/chatrooms", 100) + b'{"na')
        with trio.fail_after(GUARD_S):
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 401"), data
    assert await metric(small.url, "minitalk_http_body_timeouts_total") == 1


async def test_an_idle_keep_alive_connection_is_closed(small: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", small.port)
    async with stream:
        await stream.send_all(SECOND)
        with trio.fail_after(GUARD_S):
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 200") and len(_split_responses(data)) == 1


async def test_a_trickled_second_head_is_cut_by_the_keep_alive_timeout(small: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", small.port)
    async with stream:
        await stream.send_all(SECOND + b"GET /hea")  # the second head never completes
        with trio.fail_after(GUARD_S):
            data = await read_until_closed(stream)
    assert len(_split_responses(data)) == 1


# -- item 4: connections per address -------------------------------------------------------------------------


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(GUARD_S):
        # Polling, not an Event: the server's connection count has no waitable hook.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_connections_past_the_per_address_limit_get_503(nursery: trio.Nursery, db_path: Path) -> None:
    running = await start_server(nursery, make_config(db_path, max_connections_per_ip=2))
    door = running.server.front_door
    first = await trio.open_tcp_stream("127.0.0.1", running.port)
    second = await trio.open_tcp_stream("127.0.0.1", running.port)
    await wait_for(lambda: door.open_connections("127.0.0.1") == 2)
    third = await trio.open_tcp_stream("127.0.0.1", running.port)
    async with third:
        with trio.fail_after(GUARD_S):
            data = await read_until_closed(third)
    assert data.startswith(b"HTTP/1.1 503") and b"Connection: close" in data
    assert data.endswith(b'{"error":"Too many connections from this address"}')
    await first.aclose()
    await wait_for(lambda: door.open_connections("127.0.0.1") == 1)
    async with httpx.AsyncClient(base_url=running.url, timeout=GUARD_S) as http:
        assert (await http.get("/health")).status_code == 200  # a freed slot is usable again
        text = (await http.get("/metrics")).text
    assert 'minitalk_rate_limits_hit_total{kind="connections_per_ip"} 1.0' in text
    await second.aclose()
    await running.stop()


# -- item 4: running out of descriptors ----------------------------------------------------------------------


async def test_accept_backs_off_when_descriptors_run_out_and_recovers(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Soft 100, hard 128: the server raises its soft limit to 128 at start, then 200 idle connections
    # exhaust it. Each idle connection would be dropped after the 30 s head timeout; we close them earlier.
    args = ["--database", f"sqlite:///{tmp_path}/fd.db"]
    server = await start_server_process(nursery, args, nofile=(100, 128))
    assert b"descriptor limit (RLIMIT_NOFILE) raised from 100 to 128" in server.log
    idle: list[trio.SocketStream] = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(200)]
    with trio.fail_after(GUARD_S):
        # Polling, not an Event: the log is a bytearray filled by another task.
        while b"accept() failed" not in server.log:  # noqa: ASYNC110
            await trio.sleep(0.05)
    await trio.sleep(2)  # let the accept loop fail and back off for a while (10 ms, 20 ms, ... 1 s)
    for stream in idle:
        await stream.aclose()
    with trio.fail_after(GUARD_S):  # the front door notices the EOFs, descriptors free up, accept resumes
        async with httpx.AsyncClient(base_url=server.url, timeout=GUARD_S) as http:
            assert (await http.get("/health")).status_code == 200
            errors = await metric(server.url, "minitalk_accept_errors_total")
    log = server.log.decode(errors="replace")
    assert log.count("accept() failed") == 1, "one line per episode"
    assert errors >= 1 and len(log.splitlines()) < 30, log[-2000:]
    assert await server.terminate() == 0


# -- configuration ------------------------------------------------------------------------------------------


def test_new_options_are_documented_with_units() -> None:
    helps: dict[str, Any] = {o.flag: o.help for o in OPTIONS}
    for flag, unit in (
        ("--body-timeout", "seconds"),
        ("--keep-alive-timeout", "seconds"),
        ("--max-connections-per-ip", "connections"),
    ):
        assert unit in helps[flag]
    config = load_config(["--body-timeout", "2.5"], {"KEEP_ALIVE_TIMEOUT": "7", "MAX_CONNECTIONS_PER_IP": "0"})
    assert (config.body_timeout, config.keep_alive_timeout, config.max_connections_per_ip) == (2.5, 7.0, 0)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for flag in helps:
        assert f"`{flag}`" in readme, flag


# -- the body guard alone, on a fake hypercorn and virtual time -------------------------------------------------

Message = dict[str, Any]


async def run_guard(
    app: Callable[[Message, Callable[[], Any], Callable[[Message], Any]], Any],
    content_length: int,
    feed: list[tuple[float, Message]],
) -> tuple[list[tuple[float, Message]], int]:
    """Run ``app`` under a BodyGuard (10 s deadline, 1 KiB drain limit); ``feed`` is (when, message) for
    receive. Returns what the app sent, each with the virtual time it was sent at, and the timeout count."""
    sent: list[tuple[float, Message]] = []
    timeouts = 0
    to_app, from_client = trio.open_memory_channel[Message](0)

    def timed_out() -> None:
        nonlocal timeouts
        timeouts += 1

    async def client() -> None:
        start = trio.current_time()
        for when, message in feed:
            await trio.sleep_until(start + when)
            await to_app.send(message)

    async def send(message: Message) -> None:
        sent.append((trio.current_time(), message))

    guard = BodyGuard(app, body_timeout=10, drain_limit=1024, on_timeout=timed_out)
    scope = {"type": "http", "headers": [(b"content-length", str(content_length).encode())]}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await guard(scope, from_client.receive, send)
        nursery.cancel_scope.cancel()
    return sent, timeouts


def chunk(data: bytes, more: bool = True) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


async def answer_401(scope: Message, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
    """An app that answers without reading the body (the auth check comes first)."""
    await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no", "more_body": False})


async def read_all_then_200(scope: Message, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_guard_a_stalled_body_gets_408_at_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    sent, timeouts = await run_guard(read_all_then_200, 10, [(0, chunk(b"ab"))])
    (at, start), (_, body) = sent
    assert at == 10 and start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert b"Request body timeout" in body["body"] and timeouts == 1


async def test_guard_an_early_response_waits_for_the_rest_of_the_body(autojump_clock: trio.abc.Clock) -> None:
    # The 401's bytes go out at once; its end (which writes nothing) waits until the body's last part at 3 s,
    # so the connection can carry the next request.
    sent, timeouts = await run_guard(answer_401, 4, [(0, chunk(b"ab")), (3, chunk(b"cd", more=False))])
    assert [(at, m["type"], m.get("more_body")) for at, m in sent] == [
        (0, "http.response.start", None),
        (0, "http.response.body", True),
        (3, "http.response.body", False),
    ]
    assert (b"connection", b"close") not in sent[0][1]["headers"] and timeouts == 0


async def test_guard_an_early_response_to_a_long_body_closes(autojump_clock: trio.abc.Clock) -> None:
    # 100 KiB left is past the 1 KiB drain limit: say Connection: close rather than read it all.
    sent, timeouts = await run_guard(answer_401, 100 * 1024, [(0, chunk(b"ab"))])
    assert (b"connection", b"close") in sent[0][1]["headers"]
    assert [at for at, _ in sent] == [0, 0] and timeouts == 0


async def test_guard_a_body_that_stops_after_an_early_response_is_cut(autojump_clock: trio.abc.Clock) -> None:
    sent, timeouts = await run_guard(answer_401, 4, [(0, chunk(b"ab"))])
    assert [at for at, _ in sent] == [0, 0, 10] and timeouts == 1

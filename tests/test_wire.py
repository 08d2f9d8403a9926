"""Wire-level robustness with a raw websocket client: every bad input gets a clean close or an ``error``,
and the server keeps serving everyone else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from server.chat import ERR_NUL
from tests.conftest import RunningServer, make_config, start_server
from tests.raw_client import RawClient, raw_client
from tests.sio_peer import make_room, make_users, wait_until


@pytest.fixture
async def strict(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[RunningServer]:
    """A server with tight limits so the limits are reachable in a test (each is a documented option)."""
    config = make_config(db_path, max_packet_bytes=4096, connect_timeout=0.5, ping_interval=0.3, ping_timeout=0.3)
    server = await start_server(nursery, config)
    yield server
    await server.stop()


async def token_and_room(url: str) -> tuple[dict[str, str], str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        tokens = await make_users(http, ["a", "b"])
        return tokens, await make_room(http, tokens["a"], ["b"])


async def closed_code(client: RawClient) -> int | None:
    """Read until the server closes; the close code."""
    with trio.fail_after(10):
        try:
            while True:
                await client.packet()
        except ConnectionClosed as exc:
            return None if exc.reason is None else exc.reason.code


async def still_serving(url: str, token: str, room: str) -> None:
    async with raw_client(url, token) as c:
        await c.emit("send_message", {"roomId": room, "content": "still here"}, ack_id=1)
        with trio.fail_after(10):
            while (event := await c.next_event())[0] != "ack:1":
                pass
        assert event[1]["ok"] is True


async def test_handshake_over_websocket_directly(running: RunningServer) -> None:
    tokens, room = await token_and_room(running.url)
    async with raw_client(running.url, tokens["a"]) as c:
        assert c.open["upgrades"] == [] and c.open["pingInterval"] == 25000 and c.open["pingTimeout"] == 60000
        assert c.open["maxPayload"] == 1024 * 1024
        await c.emit("send_message", {"roomId": room, "content": "hi"}, ack_id=5)
        events = [await c.next_event(), await c.next_event()]
        assert sorted(name for name, _ in events) == ["ack:5", "message"]


@pytest.mark.parametrize(
    "garbage",
    ["x", "", "4zz", '42["send_message",{', "42[", '42{"not":"an array"}', "9" * 100],
)
async def test_malformed_packets_close_cleanly(running: RunningServer, garbage: str) -> None:
    tokens, room = await token_and_room(running.url)
    async with raw_client(running.url, tokens["a"]) as bad:
        await bad.ws.send_message(garbage)
        if garbage == '42{"not":"an array"}':  # valid Socket.IO framing, not an event array: ignored
            await bad.emit("send_message", {"roomId": room, "content": "ok"}, ack_id=1)
            with trio.fail_after(10):  # read up to the ack: trio-websocket holds one unread message at most
                while (await bad.next_event())[0] != "ack:1":
                    pass
        else:
            assert await closed_code(bad) in (1000, 1002)
    await still_serving(running.url, tokens["b"], room)


async def test_wrong_payloads_get_error_events(running: RunningServer) -> None:
    tokens, room = await token_and_room(running.url)
    async with raw_client(running.url, tokens["a"]) as c:
        payloads: list[Any] = [None, 42, "text", [], {"roomId": room}, {"roomId": room, "content": {"nested": 1}}]
        for data in payloads:
            await c.emit("send_message", data)
            name, payload = await c.next_event()
            assert name == "error" and payload["message"] in (
                "Failed to send message",
                "roomId and content are required",
            )
        await c.emit("send_message", {"roomId": room, "content": "x" * 10_001}, ack_id=9)
        assert (await c.next_event())[1] == {"message": "Message content too long (limit 10000 characters)"}
        assert (await c.next_event())[1]["ok"] is False
        # U+0000 is refused before storage (PostgreSQL's text cannot hold it), with the sender's ack.
        for nul in ({"roomId": room, "content": "a\x00b"}, {"roomId": room, "content": "ok", "clientMsgId": "c\x00"}):
            await c.emit("send_message", nul, ack_id=8)
            assert (await c.next_event())[1] == {"message": ERR_NUL}
            assert (await c.next_event())[1]["ok"] is False
        await c.emit("leave_room", None)
        assert await c.next_event() == ("error", {"message": "Failed to leave room"})
        await c.emit("unknown_event", {"x": 1})
        await c.emit("send_message", {"roomId": room, "content": "fine"}, ack_id=2)
        names = {(await c.next_event())[0], (await c.next_event())[0]}
        assert names == {"message", "ack:2"}


async def test_oversize_message_closes_with_1009(strict: RunningServer) -> None:
    tokens, room = await token_and_room(strict.url)
    async with raw_client(strict.url, tokens["a"], max_message_size=10_000_000) as c:
        await c.emit("send_message", {"roomId": room, "content": "x" * 10_000})
        assert await closed_code(c) == 1009


async def test_binary_frames_are_ignored(running: RunningServer) -> None:
    tokens, room = await token_and_room(running.url)
    async with raw_client(running.url, tokens["a"]) as c:
        await c.ws.send_message(b"\x04binary attachment")
        await c.emit("send_message", {"roomId": room, "content": "after binary"}, ack_id=3)
        assert {(await c.next_event())[0], (await c.next_event())[0]} == {"message", "ack:3"}


async def test_the_chat_ignores_binary_events_and_serves_only_the_main_namespace(running: RunningServer) -> None:
    tokens, room = await token_and_room(running.url)
    async with raw_client(running.url, tokens["a"]) as c:
        await c.ws.send_message('451-["send_message",{"_placeholder":true,"num":0}]')
        await c.ws.send_message(b"attachment")
        await c.ws.send_message("40/custom,")
        assert await c.packet() == '44/custom,{"message":"Invalid namespace"}'
        await c.emit("send_message", {"roomId": room, "content": "after binary"}, ack_id=3)
        assert {(await c.next_event())[0], (await c.next_event())[0]} == {"message", "ack:3"}


async def test_client_that_never_connects_is_closed(strict: RunningServer) -> None:
    tokens, _ = await token_and_room(strict.url)
    async with raw_client(strict.url, tokens["a"], connect=False) as c:
        # connect_timeout is 0.5 s and the heartbeat checks every 0.075 s: closed well inside fail_after(10).
        assert await closed_code(c) == 1000
    assert strict.server.hub.sessions == {}


async def test_client_that_never_answers_pings_is_closed(strict: RunningServer) -> None:
    tokens, room = await token_and_room(strict.url)
    async with raw_client(strict.url, tokens["a"]) as silent, raw_client(strict.url, tokens["b"]) as polite:
        events: list[str] = []

        async def polite_reader() -> None:
            while True:  # next_event answers every ping
                events.append((await polite.next_event())[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(polite_reader)
            pings = 0
            with trio.fail_after(10):
                while True:  # ping every 0.3 s, 0.3 s to answer: the silent one is closed after ~0.6 s
                    try:
                        text = await silent.packet()
                    except ConnectionClosed:
                        break
                    pings += text == "2"
            assert pings >= 1
            await trio.sleep(1.0)  # several more ping rounds: the polite client stays
            await polite.emit("send_message", {"roomId": room, "content": "alive"}, ack_id=1)
            await wait_until(lambda: "ack:1" in events)
            nursery.cancel_scope.cancel()
        assert [s.user for s in strict.server.hub.sessions.values()] == ["b"]


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("EIO=4&transport=websocket&sid=nope", b'{"code":1,"message":"Session ID unknown"}'),
        ("EIO=3&transport=websocket", b'{"code":5,"message":"Unsupported protocol version"}'),
    ],
)
async def test_bad_websocket_handshakes_are_refused(running: RunningServer, query: str, body: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    await stream.send_all(
        f"GET /socket.io/?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    reply = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            reply += chunk
    await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 400") and reply.endswith(body)


async def test_garbage_http_is_refused_and_server_keeps_serving(running: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    await stream.send_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    with trio.fail_after(10):
        reply = await stream.receive_some(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    await stream.aclose()
    async with httpx.AsyncClient(base_url=running.url) as http:
        assert (await http.get("/health")).status_code == 200


class ServerFrames:
    """A raw websocket client's reader: unmasked server frames → text packets (a test-side parser)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._in_head = True  # the HTTP 101 response comes first

    async def packet(self) -> str:
        while True:
            buf = self._buffer
            if self._in_head and b"\r\n\r\n" in buf:
                del buf[: buf.index(b"\r\n\r\n") + 4]
                self._in_head = False
            if not self._in_head and len(buf) >= 2:
                length, head = buf[1] & 0x7F, 2
                if length == 126 and len(buf) >= 4:
                    length, head = int.from_bytes(buf[2:4], "big"), 4
                elif length == 127 and len(buf) >= 10:
                    length, head = int.from_bytes(buf[2:10], "big"), 10
                if (length < 126 or head > 2) and len(buf) >= head + length:
                    payload = bytes(buf[head : head + length])
                    del buf[: head + length]
                    return payload.decode()
            data = await self._stream.receive_some(1 << 20)
            assert data, "the server closed the connection"
            self._buffer += data


STALLED_HANDSHAKE = (
    b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n" + b"\x81\x82\x00\x00\x00\x0040"  # a masked "40" frame
)


@pytest.mark.parametrize("mode", ["durable", "fast"])
async def test_a_stalled_reader_is_never_cut_off_and_catches_up_from_the_log(
    nursery: trio.Nursery, db_path: Path, mode: str
) -> None:
    high_water = 256 * 1024
    config = make_config(db_path, catchup_high_water=high_water, delivery_mode=mode, message_rate=0)
    server = await start_server(nursery, config)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, ["sender", "reader", "stalled"])
        room = await make_room(http, tokens["sender"], ["reader", "stalled"])
    content = "🎆" * 2000  # 8 KB of UTF-8 per message
    total = 3000  # 24 MB in all: far more than the kernel's socket buffers plus the high-water mark hold
    # The stalled member: a plain socket that does the handshake and then reads nothing while the room talks.
    stalled = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stalled.send_all(
        b"GET /socket.io/?EIO=4&transport=websocket&token="
        + tokens["stalled"].encode()
        + b" HTTP/1.1\r\n"
        + STALLED_HANDSHAKE
    )
    received: list[int] = []
    most_queued = 0
    async with (
        raw_client(server.url, tokens["sender"]) as sender,
        raw_client(server.url, tokens["reader"], max_message_size=1 << 20) as reader,
    ):
        sender_seen = 0

        async def read_all() -> None:
            while len(received) < total:
                name, data = await reader.next_event()
                if name == "message":
                    received.append(data["seq"])

        async def drain_sender() -> None:
            nonlocal sender_seen
            while True:
                sender_seen += (await sender.next_event())[0] == "message"

        async with trio.open_nursery() as inner:
            inner.start_soon(read_all)
            inner.start_soon(drain_sender)
            for i in range(total):
                # The readers share this process (and its one core) with the server: the sender keeps at most
                # 8 messages (64 KB) ahead of the slower of them, so only the stalled member falls behind.
                await wait_until(lambda i=i: i - min(len(received), sender_seen) <= 8, within=30)  # type: ignore[misc]
                await sender.emit("send_message", {"roomId": room, "content": f"{i} {content}"})
                queued = [s.pending_bytes for s in server.server.hub.sessions.values() if s.user == "stalled"]
                assert queued, "the stalled member is still connected"
                most_queued = max(most_queued, queued[0])
            await wait_until(lambda: len(received) >= total, within=60)
            inner.cancel_scope.cancel()
    assert received == list(range(1, total + 1)), "the reading member got everything, in order"
    # Memory for the stalled member: the high-water mark plus one page (itself cut at the high-water mark).
    assert most_queued <= 2 * high_water + 16 * 1024
    stats = server.server.hub.statistics()
    assert stats["lagging"] == 1 and stats["lag_episodes"] >= 1

    # Now it reads: everything it missed arrives from the log, in order, exactly once, then it is live again.
    frames = ServerFrames(stalled)
    seqs: list[int] = []
    with trio.fail_after(60):
        while len(seqs) < total:
            text = await frames.packet()
            if text == "2":
                await stalled.send_all(b"\x81\x81\x00\x00\x00\x003")  # a masked pong
            elif text.startswith('42["message"'):
                seqs.append(json.loads(text[2:])[1]["seq"])
    assert seqs == list(range(1, total + 1)), "the stalled member got every message once, in seq order"
    await wait_until(lambda: server.server.hub.statistics()["lagging"] == 0)
    assert server.server.metrics.slow_consumer_disconnects._value.get() == 0
    assert server.server.hub.statistics()["deliveries_caught_up"] > 0
    await stalled.aclose()
    await server.stop()

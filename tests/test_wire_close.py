"""The websocket close handshake on the wire, with a raw TCP client that sees every byte the server sends:
exactly one close frame per connection, the client's close code echoed, and the valid packets that share
a TCP write with a bad frame handled before the close."""

from __future__ import annotations

import os
import struct

import httpx
import msgspec
import trio

from protocol.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, unmask
from tests.conftest import RunningServer, bearer
from tests.sio_peer import make_room, make_users

Frame = tuple[int, bytes]


def client_frame(payload: bytes, opcode: int = OP_TEXT, *, first: int | None = None) -> bytes:
    """One masked client frame (payloads up to 125 bytes are all these tests need)."""
    assert len(payload) <= 125
    mask = os.urandom(4)
    b0 = 0x80 | opcode if first is None else first
    return bytes((b0, 0x80 | len(payload))) + mask + unmask(payload, mask)


def close_payload(frames: list[Frame]) -> list[tuple[int, bytes]]:
    return [(struct.unpack("!H", p[:2])[0], p[2:]) for op, p in frames if op == OP_CLOSE]


def parse_server_frames(data: bytes) -> list[Frame]:
    """Every (unmasked, final) frame the server sent; fails on trailing garbage."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, length, pos = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        frames.append((opcode, data[pos : pos + length]))
        pos += length
    assert pos == len(data), "a truncated frame"
    return frames


class RawSocket:
    """A websocket over a plain TCP stream: the test decides every byte, and reads to EOF."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.received = b""

    @classmethod
    async def connect(cls, port: int, token: str) -> RawSocket:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            f"GET /socket.io/?EIO=4&transport=websocket&token={token} HTTP/1.1\r\nHost: x\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        sock = cls(stream)
        head = await sock._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        await sock._read_frames(1)  # the Engine.IO open packet
        await stream.send_all(client_frame(b"40"))
        [(opcode, payload)] = await sock._read_frames(1)
        assert opcode == OP_TEXT and payload.startswith(b'40{"sid":'), payload
        return sock

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "EOF during the handshake"
            self.received += chunk
        head, self.received = self.received.split(marker, 1)
        return head

    async def _read_frames(self, n: int) -> list[Frame]:
        while True:
            try:
                frames = parse_server_frames(self.received)
            except (AssertionError, IndexError):
                frames = []
            if len(frames) >= n:
                self.received = b""
                return frames
            chunk = await self.stream.receive_some(65536)
            assert chunk, "EOF before the expected frames"
            self.received += chunk

    async def frames_until_eof(self) -> list[Frame]:
        """Everything the server sends until it closes the TCP connection."""
        with trio.fail_after(10):  # hang guard: the server closes at once, it never waits on a timer
            while chunk := await self.stream.receive_some(65536):
                self.received += chunk
        await self.stream.aclose()
        return parse_server_frames(self.received)


async def user_and_room(url: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        tokens = await make_users(http, ["a", "b"])
        return tokens["a"], await make_room(http, tokens["a"], ["b"])


async def test_a_protocol_error_sends_one_close_frame_then_closes(running: RunningServer) -> None:
    token, _ = await user_and_room(running.url)
    sock = await RawSocket.connect(running.port, token)
    await sock.stream.send_all(client_frame(b"x", first=0xC1))  # RSV1 set, no extension negotiated
    frames = await sock.frames_until_eof()
    assert [op for op, _ in frames] == [OP_CLOSE], frames
    assert close_payload(frames)[0][0] == 1002


async def test_an_invalid_close_code_is_answered_with_one_1002(running: RunningServer) -> None:
    token, _ = await user_and_room(running.url)
    sock = await RawSocket.connect(running.port, token)
    await sock.stream.send_all(client_frame(struct.pack("!H", 1005), OP_CLOSE))
    frames = await sock.frames_until_eof()
    assert [code for code, _ in close_payload(frames)] == [1002] and len(frames) == 1


async def test_a_client_close_code_is_echoed_once(running: RunningServer) -> None:
    token, _ = await user_and_room(running.url)
    sock = await RawSocket.connect(running.port, token)
    await sock.stream.send_all(client_frame(struct.pack("!H", 4001) + "bye 👋".encode(), OP_CLOSE))
    frames = await sock.frames_until_eof()
    assert frames == [(OP_CLOSE, struct.pack("!H", 4001))]


async def test_packets_before_a_bad_frame_in_the_same_write_are_handled_first(running: RunningServer) -> None:
    token, room = await user_and_room(running.url)
    sock = await RawSocket.connect(running.port, token)
    send = msgspec.json.encode(["send_message", {"roomId": room, "content": "before the bad frame"}])
    await sock.stream.send_all(
        client_frame(b"2hello")  # an Engine.IO ping: answered with "3hello"
        + client_frame(b"are you there", OP_PING)  # a websocket ping: answered with a pong
        + client_frame(b"42" + send)
        + client_frame(b"\x03", OP_CLOSE)  # a 1-byte close payload: a protocol error
    )
    frames = await sock.frames_until_eof()
    assert frames[:2] == [(OP_TEXT, b"3hello"), (OP_PONG, b"are you there")], frames
    # The message may be broadcast back before the close (fast commit) or not; nothing after the close.
    assert frames[-1][0] == OP_CLOSE and [code for code, _ in close_payload(frames)] == [1002]
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        with trio.fail_after(10):  # the batcher commits within its linger (2 ms); this only guards a hang
            while True:
                r = await http.get(f"/api/chatrooms/{room}/messages", headers=bearer(token))
                if [m["content"] for m in r.json()] == ["before the bad frame"]:
                    break
                await trio.sleep(0.01)

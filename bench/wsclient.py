"""A minimal Engine.IO/Socket.IO websocket client for load generation: cheap to send, cheap to receive.

Receivers never parse JSON: they count ``42["message"`` markers in the byte stream and sample latency from
the send time the sender wrote at the start of each message's content. That keeps a client core able to
absorb hundreds of thousands of deliveries per second, so the numbers measure the server.
"""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import time

import msgspec
import trio

_READ = 65536  # under glibc's mmap threshold: see bench/client.py
MARK = b'42["message"'
CONTENT = b'"content":"t'
_encode = msgspec.json.Encoder().encode


def client_frame(payload: bytes) -> bytes:
    """A masked text frame. The mask key is zero: legal on the wire, and this tool only targets loopback."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + b"\x00\x00\x00\x00" + payload


PONG = client_frame(b"3")
PING_FRAME = b"\x81\x012"
# A websocket-level ping (opcode 9, unmasked from a server). uvicorn (under the python-socketio peer) sends one
# every 20 s and closes a connection whose pong has not come 20 s later; browsers answer them unasked, and so
# must the load generator, or every run past 40 s ends with the peer closing every client.
WS_PING = b"\x89"


def ws_pongs(data: bytes | bytearray) -> bytes:
    """Masked pong frames echoing the payload of each websocket ping in a chunk (RFC 6455 §5.5.3).

    A byte 0x89 that is not a frame header (these messages are ASCII JSON, so in practice there is none) only
    costs an unsolicited pong, which §5.5.3 allows. A ping split across two reads is missed; the next one, 20 s
    later, is answered.
    """
    out = []
    at = data.find(WS_PING)
    while at != -1 and at + 1 < len(data):
        n = data[at + 1]
        payload = data[at + 2 : at + 2 + n]
        if n <= 125 and len(payload) == n:  # a control frame's payload is at most 125 bytes
            out.append(bytes((0x8A, 0x80 | n)) + b"\x00\x00\x00\x00" + payload)
        at = data.find(WS_PING, at + 1)
    return b"".join(out)


def pongs_for(data: bytes | bytearray) -> bytes:
    """What a chunk from the server asks to be answered: Engine.IO pings and websocket pings."""
    return (PONG if PING_FRAME in data else b"") + (ws_pongs(data) if WS_PING in data else b"")


def send_frame(room_id: str, content: str, ack_id: int | None = None) -> bytes:
    ack = b"" if ack_id is None else str(ack_id).encode()
    return client_frame(b"42" + ack + _encode(["send_message", {"roomId": room_id, "content": content}]))


class Member:
    """One websocket session. ``count`` and ``latencies`` fill while ``receive_loop`` runs."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.count = 0
        self.latencies: list[float] = []
        self._tail = b""

    @classmethod
    async def connect(cls, host: str, port: int, token: str) -> Member:
        stream = await trio.open_tcp_stream(host, port)
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET /socket.io/?EIO=4&transport=websocket&token="
            + token.encode()
            + b" HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + client_frame(b"40")
        )
        buffer = b""
        while b'40{"sid"' not in buffer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError(f"server closed during handshake: {buffer[:200]!r}")
            buffer += chunk
        if not buffer.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(buffer[:200].decode(errors="replace"))
        return cls(stream)

    async def receive_loop(self) -> None:
        mark_tail = len(MARK) - 1
        while True:
            data = await self.stream.receive_some(_READ)
            if not data:
                return
            now = time.monotonic()
            buf = self._tail + data
            self.count += buf.count(MARK)
            self._tail = buf[-mark_tail:]
            at = data.find(CONTENT)  # the oldest message in this read: the conservative latency sample
            if at != -1:
                end = data.find(b"|", at)
                if end != -1:
                    with contextlib.suppress(ValueError):
                        self.latencies.append(now - int(data[at + len(CONTENT) : end]) / 1e9)
            owed = pongs_for(data)
            if owed:
                await self.stream.send_all(owed)


def stamped(text: str) -> str:
    """Content that starts with the send time, for the receivers' latency samples."""
    return f"t{time.monotonic_ns()}|{text}"

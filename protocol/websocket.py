"""The websocket pieces we do ourselves, sans-IO: the upgrade decision, the accept key, outbound frames.

Why ourselves: a broadcast is framed *once* and the same bytes go to every member (server frames are
unmasked, so one frame fits all). Inbound frames (masked, possibly fragmented) are left to wsproto.
The upgrade decision merges every ``Connection`` header first: websocket-client 1.6.4 sends
``Connection: Upgrade`` and then the load test's ``Connection: keep-alive`` (contract §3.6-2).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable

from protocol.errors import ProtocolError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

OP_TEXT = 0x1
OP_CLOSE = 0x8


def header_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[str]:
    """Every comma-separated token of every header called ``name`` (lower-cased, merged like Node does)."""
    tokens: set[str] = set()
    for key, value in headers:
        if key.lower() == name:
            tokens.update(t.strip().lower() for t in value.decode("latin-1").split(","))
    return tokens - {""}


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def is_upgrade(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    headers = list(headers)
    return (
        method == b"GET"
        and "websocket" in header_tokens(headers, b"upgrade")
        and "upgrade" in header_tokens(headers, b"connection")
    )


def accept_key(client_key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(client_key.strip() + _GUID).digest())


def handshake_response(client_key: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(client_key) + b"\r\n\r\n"
    )


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, unmasked frame (server to client)."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(struct.pack("!H", code) + reason.encode()[:123], OP_CLOSE)


OP_CONTINUATION = 0x0
OP_BINARY = 0x2
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


class FrameError(ProtocolError):
    """The client broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big-integer operation (C speed, no per-byte Python loop)."""
    n = len(payload)
    if n == 0:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class FrameReader:
    """Client-to-server frames → complete messages, sans-IO.

    ``feed`` returns a list of ``(opcode, payload)``: ``OP_TEXT`` with a ``str`` (UTF-8 checked),
    ``OP_BINARY``/``OP_PING``/``OP_PONG`` with bytes, ``OP_CLOSE`` with the raw close payload. Fragmented
    messages are joined; a message larger than ``max_message`` bytes raises FrameError(1009) before it is
    buffered; every RFC 6455 rule a server must enforce (masking, reserved bits, opcodes, control-frame
    size and fragmentation, continuation order, UTF-8) raises FrameError with its close code.
    """

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._part_size = 0
        self._opcode: int | None = None  # opcode of the fragmented message in progress

    def feed(self, data: bytes) -> list[tuple[int, str | bytes]]:
        buf = self._buffer
        buf += data
        out: list[tuple[int, str | bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            self._check_header(b0, b1, opcode, length)
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if opcode not in _CONTROL_OPCODES and self._part_size + length > self._max:
                raise FrameError(CLOSE_TOO_BIG, f"message over {self._max} bytes")
            start = pos + head + 4
            if end < start + length:
                break
            payload = unmask(memoryview(buf)[start : start + length], bytes(buf[pos + head : start]))
            pos = start + length
            message = self._assemble(bool(fin), opcode, payload)
            if message is not None:
                out.append(message)
        del buf[:pos]
        return out

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        if b0 & 0x70:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if not b1 & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if opcode in _CONTROL_OPCODES:
            if not b0 & 0x80 or length > 125:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
        elif opcode not in _DATA_OPCODES:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, str | bytes] | None:
        if opcode in _CONTROL_OPCODES:
            return opcode, payload
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
        elif self._opcode is not None:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "new message before the fragmented one finished")
        else:
            if fin:  # the common case: one frame, one message
                return opcode, _text(payload) if opcode == OP_TEXT else payload
            self._opcode = opcode
        self._parts.append(payload)
        self._part_size += len(payload)
        if not fin:
            return None
        kind, whole = self._opcode, b"".join(self._parts)
        self._opcode, self._parts, self._part_size = None, [], 0
        return kind, _text(whole) if kind == OP_TEXT else whole


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None

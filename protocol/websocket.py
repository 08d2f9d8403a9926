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

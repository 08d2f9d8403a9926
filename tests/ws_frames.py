"""Websocket frames for the permessage-deflate tests: a client's (masked, compressed or not, fragmented), the
server's read back (split by hand, or decoded by wsproto's client with the extension agreed on)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from protocol.deflate import TAIL
from protocol.websocket import OP_CONTINUATION, OP_PING

ANSWER = b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def deflate_raw(payload: bytes, wbits: int = 15) -> bytes:
    """What a client sends for a compressed message: raw DEFLATE, sync-flushed, its tail removed."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[: -len(TAIL)]


def masked(b0: int, payload: bytes, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """One client frame: ``b0`` as given (FIN, RSV, opcode), masked payload."""
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else _xor(payload, mask)
    return head + mask + body


def _xor(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def message_frames(
    payload: bytes, opcode: int, *, compress: bool, cuts: Sequence[int] = (), ping_between: bool = False
) -> bytes:
    """A whole message as a client sends it: compressed or not, cut into fragments at ``cuts``."""
    data = deflate_raw(payload) if compress else payload
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out = []
    for i, piece in enumerate(pieces):
        b0 = (opcode | (0x40 if compress else 0)) if i == 0 else OP_CONTINUATION
        if i == len(pieces) - 1:
            b0 |= 0x80
        out.append(masked(b0, piece))
        if ping_between and i < len(pieces) - 1:
            out.append(masked(0x80 | OP_PING, b"between"))
    return b"".join(out)


def server_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The server's (unmasked) frames: (first header byte, payload)."""
    pos = 0
    while pos < len(data):
        b0, n = data[pos], data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        yield b0, data[pos : pos + n]
        pos += n
    assert pos == len(data)


def wsproto_client(response: str = ANSWER.decode()) -> FrameProtocol:
    """wsproto's client side with permessage-deflate agreed as ``response`` says: the reference decoder."""
    extension = PerMessageDeflate()
    extension.finalize(response.removeprefix("permessage-deflate").lstrip("; "))
    return FrameProtocol(client=True, extensions=[extension])


def wsproto_messages(proto: FrameProtocol, data: bytes) -> list[Any]:
    proto.receive_bytes(data)
    messages: list[Any] = []
    parts: list[Any] = []
    for f in proto.received_frames():
        parts.append(f.payload)
        if f.message_finished:
            messages.append("".join(parts) if isinstance(parts[0], str) else b"".join(parts))
            parts = []
    return messages


def zeros_deflated(n: int) -> bytes:
    """``n`` zero bytes deflated, made a MiB at a time (a 64 MiB bomb never exists uncompressed here)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(min(n, 1 << 20))
    parts = []
    left = n
    while left:
        parts.append(compressor.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    data = b"".join(parts) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[: -len(TAIL)]

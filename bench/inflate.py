"""The load generator's side of permessage-deflate (RFC 7692): the offer, the server's answer, inbound inflate.

Theory of operation.

*Who offers.* A member the scenario picks (``--deflate-share``) adds Chromium's offer to its handshake,
``permessage-deflate; client_max_window_bits``, and reads the server's answer (:func:`agreement`): no extension
(declined, or compression off) leaves the member plain; anything a client must refuse (an extension or a
parameter it did not offer, RFC 6455 §9.1 and RFC 7692 §7.1) fails the connection. The member still sends
plain frames, which RFC 7692 allows (compression is per message and the sender's choice).

*Inflating.* The checking code downstream (``Client.take``, the count-only reader, the pong scan) reads the byte
stream of websocket frames as the server wrote it, without walking frames: a regex finds each message. A member
that agreed on compression puts a :class:`FrameInflater` in front of it: it walks the server's frames, passes
every plain frame through as it came (one slice for a run of them), and replaces each compressed message (RSV1
on its first frame) by the plain frame it stands for. The code downstream cannot tell the difference, and
members that did not agree on compression never go through this module: their path costs what it did.

*Context.* The server answers ``server_no_context_takeover``, so each message is a raw DEFLATE stream of its
own, inflated by a fresh ``zlib.decompressobj(-15)`` with the sync-flush tail put back (RFC 7692 §7.2.2). A
server that keeps its context (the extension's default: Node's ``ws`` and python's ``websockets`` do) is read
with one decompressor kept for the connection. Window 15 reads whatever window the server compressed with.

*Bytes on the wire.* :attr:`FrameInflater.wire_bytes` counts what came off the socket, before inflating; the
plain members' loops count their reads themselves (``bench/client.py``, ``bench/countreader.py``).
"""

from __future__ import annotations

import struct
import zlib

import msgspec
import trio

from protocol.ws_extensions import parse_offers

NAME = "permessage-deflate"
# What Chromium offers (and Firefox: "permessage-deflate"): a server may then limit our window, which we ignore
# since we send plain frames.
OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1: removed by the sender after a sync flush, put back by the receiver
RSV1 = 0x40
_WINDOW_BITS = {str(n) for n in range(8, 16)}
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_WINDOWS = ("server_max_window_bits", "client_max_window_bits")


class DeflateRefused(ConnectionError):
    """The server's answer or its frames break permessage-deflate: the server's fault, the connection is failed."""


class Agreement(msgspec.Struct, frozen=True):
    """What the server agreed on; only whether it keeps its compression context between messages matters here."""

    context_takeover: bool


def agreement(head: bytes) -> Agreement | None:
    """The permessage-deflate the server's 101 answer (its head, up to the blank line) agreed on; None: none."""
    values = [
        line.split(b":", 1)[1].strip().decode("latin-1")
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"sec-websocket-extensions:")
    ]
    if not values:
        return None
    offers = parse_offers(", ".join(values))
    if len(offers) != 1 or offers[0][0] != NAME:
        raise DeflateRefused(f"the server answered extensions we did not offer: {values!r}")
    seen: set[str] = set()
    for name, value in offers[0][1]:
        if name in seen or name not in (*_FLAGS, *_WINDOWS):
            raise DeflateRefused(f"the server's permessage-deflate parameter {name!r} is unknown or repeated")
        if (name in _FLAGS) != (value is None) or (value is not None and value not in _WINDOW_BITS):
            raise DeflateRefused(f"the server's permessage-deflate parameter {name}={value!r} is malformed")
        seen.add(name)
    return Agreement(context_takeover="server_no_context_takeover" not in seen)


def plain_header(opcode: int, n: int) -> bytes:
    """A final, unmasked frame's header (what the server would have sent for the message uncompressed)."""
    if n < 126:
        return bytes((0x80 | opcode, n))
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n)
    return struct.pack("!BBQ", 0x80 | opcode, 127, n)


class FrameInflater:
    """Server bytes in, the same frames out with each compressed message inflated into a plain frame.

    ``feed`` returns every complete frame of what it was given (plus what an earlier call left over), and keeps
    a frame split across reads until the rest comes. Fragmented compressed messages are put back together.
    """

    __slots__ = ("_buf", "_message", "_shared", "inflated", "wire_bytes")

    def __init__(self, agreed: Agreement) -> None:
        # One decompressor for the connection when the server keeps its context; else a fresh one per message.
        self._shared = zlib.decompressobj(-15) if agreed.context_takeover else None
        self._buf = b""  # an incomplete frame from the last read
        self._message: tuple[zlib._Decompress, int, list[bytes]] | None = None  # a fragmented compressed message
        self.wire_bytes = 0  # bytes fed: what came off the socket
        self.inflated = 0  # compressed messages inflated

    def feed(self, data: bytes | bytearray) -> bytes:
        self.wire_bytes += len(data)
        buf = self._buf + data if self._buf else bytes(data)
        n = len(buf)
        at = start = 0  # the frame being read; the first plain byte not yet handed out
        out: list[bytes] | None = None
        while n - at >= 2:
            b0, length = buf[at], buf[at + 1]
            if length & 0x80:
                raise DeflateRefused("a masked frame from the server (RFC 6455 §5.1: a server never masks)")
            head = 2
            if length == 126:
                if n - at < 4:
                    break
                length, head = (buf[at + 2] << 8) | buf[at + 3], 4
            elif length == 127:
                if n - at < 10:
                    break
                length, head = int.from_bytes(buf[at + 2 : at + 10], "big"), 10
            end = at + head + length
            if end > n:
                break
            if b0 & 0x70 or (self._message is not None and not b0 & 0x0F):
                if out is None:
                    out = []
                out.append(buf[start:at])
                self._inflate(b0, buf[at + head : end], out)
                start = end
            at = end
        self._buf = buf[at:]
        if out is None:
            return buf if at == n else buf[:at]
        out.append(buf[start:at])
        return b"".join(out)

    def _inflate(self, b0: int, payload: bytes, out: list[bytes]) -> None:
        """A compressed message's frame (or a continuation of one): its plain frame into ``out`` once it ends."""
        if b0 & 0x30:
            raise DeflateRefused("RSV2 or RSV3 set: no extension agreed gives them a meaning")
        opcode = b0 & 0x0F
        if b0 & RSV1:
            if opcode == 0 or opcode & 0x08:
                raise DeflateRefused("RSV1 on a continuation or control frame (only a message's first frame)")
            if self._message is not None:
                raise DeflateRefused("a new message began before the compressed one in progress ended")
            inflate = self._shared or zlib.decompressobj(-15)
            if b0 & 0x80:  # the whole message in one frame: what our server always sends
                body = self._decompress(inflate, payload + TAIL)
                out += (plain_header(opcode, len(body)), body)
                self.inflated += 1
                return
            self._message = (inflate, opcode, [])
        assert self._message is not None  # a continuation: feed() only calls with one in progress
        inflate, opcode, parts = self._message
        parts.append(self._decompress(inflate, payload))
        if b0 & 0x80:
            parts.append(self._decompress(inflate, TAIL))
            body = b"".join(parts)
            out += (plain_header(opcode, len(body)), body)
            self._message = None
            self.inflated += 1

    @staticmethod
    def _decompress(inflate: zlib._Decompress, data: bytes) -> bytes:
        try:
            return inflate.decompress(data)
        except zlib.error as exc:
            raise DeflateRefused(f"a compressed message is not valid DEFLATE data: {exc}") from None


class InflatingStream(trio.abc.Stream):
    """A member's socket behind a :class:`FrameInflater`: reads come out as the server's frames, inflated."""

    def __init__(self, stream: trio.SocketStream, inflater: FrameInflater) -> None:
        self.stream = stream
        self.inflater = inflater

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next complete frames, inflated; b"" at the end of the stream (a frame cut off there is dropped)."""
        while True:
            data = await self.stream.receive_some(max_bytes)
            if not data:
                return b""
            plain = self.inflater.feed(data)
            if plain:
                return plain

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()

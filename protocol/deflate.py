"""permessage-deflate (RFC 7692) on the websocket path, sans-IO: the agreement, outbound frames, bounded inflate.

Theory of operation.

*No context takeover, either way.* We always answer ``server_no_context_takeover; client_no_context_takeover``,
so every message is a raw DEFLATE stream of its own: nothing is kept between messages, and no connection
holds a zlib context while idle (a compressor is about 300 KiB with zlib's defaults, a decompressor about
40 KiB, and a chat server holds tens of thousands of mostly idle connections). The price is the ratio on
messages that repeat earlier ones, which chat messages over the threshold rarely do.

*Outbound, once per broadcast.* A message is compressed only when its payload is over the threshold (below
it, deflate's header and the CPU cost more than they save, and RFC 7692 §6 lets a sender choose per message),
and only when the result is smaller. A broadcast frames its packets once (:class:`Outgoing`): the plain frames
go to every member that did not negotiate, and the compressed frames are made on the first member that did,
once per window size, and shared by the rest. A :class:`Deflater` has no state of its own (no context
takeover), so one per window size serves every connection. :class:`DeflateStats` counts deflate calls (they
grow with broadcasts, not with members) and compressed frames queued (they grow with members).

*Window bits.* A client may ask for ``server_max_window_bits=N``; we answer N and compress with it, except
that zlib refuses a raw window of 8 (madler/zlib#171): we then compress with 9, which is safe because zlib's
deflate never emits a distance over ``2**wbits - 262`` (``MAX_DIST``: 250 bytes for 9, inside a 256-byte
window); Node's zlib binding makes the same substitution for the same reason. ``client_max_window_bits``
needs nothing from us: we inflate with the largest window (15), which reads any smaller one.

*Inbound, bounded.* A compressed message (RSV1 on its first frame) is inflated frame by frame by a fresh
:class:`Inflater` that never produces more than ``max_message`` bytes in all: ``decompress(data,
max_length)`` stops at the bound plus one byte, and one byte over is the 1009 close, before the rest is
inflated. A bomb of any ratio costs its sender the connection and us at most ``max_message`` + 1 bytes.
Invalid DEFLATE data fails the connection with 1007, as Node's ``ws`` does. RSV1 on a continuation or control
frame, or RSV2/RSV3, is 1002.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from protocol.websocket import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_CONTINUATION,
    OP_TEXT,
    FrameError,
    FrameReader,
    Message,
    frame,
)
from protocol.ws_extensions import Offer, Param, extension_offers

NAME = "permessage-deflate"
RSV1 = 0x40
# RFC 7692 §7.2.1: a sync flush ends with this empty stored block; the sender removes it, the receiver adds it.
TAIL = b"\x00\x00\xff\xff"
# zlib's own default level (6): its recommended trade of ratio for speed, paid once per broadcast, not per member
# (Node's ws uses the same). The server's --ws-compression-level chooses another.
LEVEL = 6
INFLATE_WBITS = -15  # the largest raw window: reads what a client compressed with any window it chose
_WINDOW_BITS = {str(n): n for n in range(8, 16)}  # RFC 7692 §7.1.2: decimal 8-15, no leading zeros


# -- the agreement ------------------------------------------------------------------------------------
def accept_offer(params: list[Param]) -> tuple[bool, int | None]:
    """Whether one permessage-deflate offer can be accepted, and the ``server_max_window_bits`` it asks for.

    Declined (False): a parameter we do not know, one given twice, a value where none belongs, a window size
    outside 8-15. RFC 7692 §5: the server declines such an offer and may accept the next one.
    """
    seen: set[str] = set()
    asked: int | None = None
    for name, value in params:
        if name in seen:
            return False, None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return False, None
        elif name == "server_max_window_bits":
            asked = _WINDOW_BITS.get(value or "")
            if asked is None:
                return False, None
        elif name == "client_max_window_bits":
            if value is not None and value not in _WINDOW_BITS:
                return False, None
        else:
            return False, None
    return True, asked


def negotiate(offers: Iterable[Offer]) -> tuple[bytes, int] | None:
    """The first acceptable permessage-deflate offer: the response's extension value and the window bits to use.

    None: nothing acceptable was offered, and the handshake answers without the extension.
    """
    for name, params in offers:
        if name != NAME:
            continue
        ok, asked = accept_offer(params)
        if not ok:
            continue
        response = NAME + "; server_no_context_takeover; client_no_context_takeover"
        if asked is not None:
            response += f"; server_max_window_bits={asked}"
        return response.encode(), asked or 15
    return None


# -- outbound -----------------------------------------------------------------------------------------
class DeflateStats:
    """Plain counters, read at scrape time (server/metrics.py): no lock on the hot path."""

    __slots__ = ("compressed_frames", "deflates")

    def __init__(self) -> None:
        self.deflates = 0  # deflate calls: one per compressed message per broadcast, whatever the room's size
        self.compressed_frames = 0  # frames queued with RSV1 set: one per member that got one


def compressed_frame(data: bytes | memoryview, opcode: int = OP_TEXT) -> bytes:
    """One final, unmasked frame with RSV1 set: ``data`` is the message deflated, its tail removed."""
    n = len(data)
    first = 0x80 | RSV1 | opcode
    if n < 126:
        return bytes((first, n)) + data
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + data
    return struct.pack("!BBQ", first, 127, n) + data


class Deflater:
    """The outbound half for connections that agreed on one window size; stateless, so shared by all of them."""

    __slots__ = ("_wbits", "bits", "level", "stats", "threshold")

    def __init__(self, bits: int, threshold: int, stats: DeflateStats, level: int = LEVEL) -> None:
        self.bits = bits
        self.level = level
        self._wbits = -max(bits, 9)  # 8 is compressed with 9: see the module's theory of operation
        self.threshold = threshold
        self.stats = stats

    def deflate(self, payload: bytes) -> memoryview | None:
        """``payload`` as one raw DEFLATE stream, sync-flushed, its tail removed; None when not smaller."""
        self.stats.deflates += 1
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, self._wbits)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if len(data) - len(TAIL) >= len(payload):
            return None
        return memoryview(data)[: -len(TAIL)]

    def frame(self, payload: bytes, opcode: int = OP_TEXT) -> bytes:
        """One message for one connection: compressed over the threshold (and counted), plain otherwise."""
        framed, compressed = self.encode(payload, opcode)
        self.stats.compressed_frames += compressed
        return framed

    def frame_all(self, packets: list[bytes], plain: bytes) -> tuple[bytes, int]:
        """Several text messages (``plain``: their plain frames, joined): the frames and how many are compressed."""
        threshold = self.threshold
        if all(len(p) <= threshold for p in packets):
            return plain, 0  # nothing to compress: the plain bytes themselves, no copy
        parts = [self.encode(p, OP_TEXT) for p in packets]
        return b"".join([framed for framed, _ in parts]), sum(compressed for _, compressed in parts)

    def encode(self, payload: bytes, opcode: int) -> tuple[bytes, int]:
        """``frame`` without the count: the frame, and 1 if it is compressed (the caller counts when it is sent)."""
        if len(payload) > self.threshold:
            data = self.deflate(payload)
            if data is not None:
                return compressed_frame(data, opcode), 1
        return frame(payload, opcode), 0


class Outgoing:
    """A broadcast's packets, framed once: ``frames`` (plain) for everyone, compressed frames on first need.

    ``tail`` is a packet some members get after the others (a recovery offset): :meth:`frames_for` gives the
    frames with or without it. Compression runs at most once per window size (in practice once: every client
    we know of leaves the server's window at 15), whatever the number of members; each call counts the
    compressed frames it hands out.
    """

    __slots__ = ("_cache", "_packets", "_tail", "frames")

    def __init__(self, packets: list[bytes], frames: bytes, tail: bytes | None = None) -> None:
        self._packets = packets
        self.frames = frames
        self._tail = tail
        self._cache: dict[tuple[int, bool], tuple[bytes, int]] = {}

    def frames_for(self, deflater: Deflater, *, with_tail: bool = False) -> bytes:
        key = (deflater.bits, with_tail)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._build(deflater, with_tail)
            self._cache[key] = hit
        framed, compressed = hit
        deflater.stats.compressed_frames += compressed
        return framed

    def _build(self, deflater: Deflater, with_tail: bool) -> tuple[bytes, int]:
        body = self._cache.get((deflater.bits, False))
        if body is None:
            body = deflater.frame_all(self._packets, self.frames)
            self._cache[(deflater.bits, False)] = body
        if not with_tail or self._tail is None:
            return body
        tail, compressed = deflater.encode(self._tail, OP_TEXT)
        return body[0] + tail, body[1] + compressed


class Compression:
    """The server's permessage-deflate: on or off, its threshold, its counters, one Deflater per window size."""

    def __init__(self, *, enabled: bool, threshold: int, level: int = LEVEL) -> None:
        self.enabled = enabled
        self.threshold = threshold
        self.level = level
        self.stats = DeflateStats()
        self._deflaters: dict[int, Deflater] = {}
        # Open websockets that agreed on the extension (the endpoint counts them). While it is 0, broadcasts
        # never look at a member's extension: the plain path costs what it did before compression existed.
        self.connections = 0

    def worth_deflating(self, packets: list[bytes], tail: bytes | None = None) -> bool:
        """Whether a broadcast of ``packets`` (and ``tail``) could go compressed to anyone: someone agreed on the
        extension and a packet is over the threshold. Asked once per broadcast, so that a broadcast of small
        messages (most chat) takes the plain path, with no per-member look and no allocation."""
        if not self.connections:
            return False
        threshold = self.threshold
        return any(len(p) > threshold for p in packets) or (tail is not None and len(tail) > threshold)

    def agree(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, Deflater] | None:
        """The handshake's ``Sec-WebSocket-Extensions`` answer and the connection's Deflater, or None."""
        if not self.enabled:
            return None
        agreed = negotiate(extension_offers(headers))
        if agreed is None:
            return None
        response, bits = agreed
        deflater = self._deflaters.get(bits)
        if deflater is None:
            deflater = self._deflaters[bits] = Deflater(bits, self.threshold, self.stats, self.level)
        return response, deflater


# -- inbound ------------------------------------------------------------------------------------------
class Inflater:
    """One compressed message, inflated frame by frame, never more than ``limit`` bytes in all."""

    __slots__ = ("_inflate", "left")

    def __init__(self, limit: int) -> None:
        self._inflate = zlib.decompressobj(INFLATE_WBITS)
        self.left = limit  # bytes the message may still inflate to

    def feed(self, data: bytes, *, final: bool) -> bytes:
        """The bytes ``data`` inflates to; the last frame's data gets the removed tail back (RFC 7692 §7.2.2)."""
        if final:
            data += TAIL
        try:
            # At most one byte over what is left: enough to know the bound is passed, never the whole bomb.
            out = self._inflate.decompress(data, self.left + 1)
        except zlib.error:
            raise FrameError(CLOSE_INVALID_DATA, "compressed message is not valid DEFLATE data") from None
        if len(out) > self.left:
            raise FrameError(CLOSE_TOO_BIG, "compressed message inflates past the message size limit")
        self.left -= len(out)
        return out


def wire_limit(max_message: int) -> int:
    """The most a compressed message's frame may carry: zlib's ``deflateBound`` for any settings, plus slack.

    A client compresses data it cannot shrink too (the threshold is its own choice), and stored blocks add a
    few bytes: such a message is refused by what it inflates to, not by a few bytes of framing.
    """
    return max_message + (max_message >> 5) + (max_message >> 7) + (max_message >> 11) + 64


class DeflateFrameReader(FrameReader):
    """:class:`~protocol.websocket.FrameReader` for a connection that negotiated permessage-deflate.

    RSV1 is allowed on the first frame of a text or binary message and marks it compressed; its frames are
    inflated as they arrive and handed on as a plain message's would be (so UTF-8 is checked on what they
    inflate to). RSV1 anywhere else, and RSV2/RSV3 always, is 1002.
    """

    def __init__(self, max_message: int) -> None:
        super().__init__(max_message)
        self._wire_max = wire_limit(max_message)
        self._inflater: Inflater | None = None  # the compressed message in progress

    def _check_reserved_bits(self, b0: int, opcode: int) -> None:
        if b0 & 0x70 != RSV1:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "RSV2 or RSV3 set (no extension gives them a meaning)")
        if opcode & 0x8:  # opcodes 0x8-0xF are control frames (RFC 6455 §5.5)
            raise FrameError(CLOSE_PROTOCOL_ERROR, "RSV1 set on a control frame (those are never compressed)")
        if opcode == OP_CONTINUATION:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "RSV1 set on a continuation frame (only a message's first)")

    def _too_big(self, b0: int, length: int) -> bool:
        if b0 & RSV1 or self._inflater is not None:
            return length > self._wire_max  # what it inflates to is bounded by the Inflater
        return True

    def _assemble(self, b0: int, opcode: int, payload: bytes) -> Message | None:
        if b0 & RSV1:  # the first frame of a compressed text or binary message (the header check saw to that)
            if self._opcode is not None:
                return super()._assemble(b0, opcode, payload)  # refused: the fragmented message has not ended
            self._inflater = Inflater(self._max)
        elif opcode != OP_CONTINUATION or self._inflater is None:
            return super()._assemble(b0, opcode, payload)  # a plain message's frame, or a control frame
        final = bool(b0 & 0x80)
        payload = self._inflater.feed(payload, final=final)
        if final:
            self._inflater = None
        return super()._assemble(b0, opcode, payload)

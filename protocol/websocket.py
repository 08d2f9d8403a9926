"""The websocket pieces we do ourselves, sans-IO: the upgrade decision, the accept key, outbound frames.

Why ourselves: a broadcast is framed *once* and the same bytes go to every member (server frames are
unmasked, so one frame fits all). Inbound frames are parsed by :class:`FrameReader` (wsproto's per-byte
unmasking cost a third of the send path, docs/architecture.md); Autobahn|Testsuite checks it through
``tools/autobahn/`` (docs/autobahn.md).
The upgrade decision merges every ``Connection`` header first: websocket-client 1.6.4 sends
``Connection: Upgrade`` and then the load test's ``Connection: keep-alive`` (contract §3.6-2).
"""

from __future__ import annotations

import base64
import codecs
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


def handshake_response(client_key: bytes, extensions: bytes | None = None) -> bytes:
    """The 101 answer; ``extensions`` is the ``Sec-WebSocket-Extensions`` value agreed on, if any."""
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(client_key) + b"\r\n"
    )
    if extensions is not None:
        head += b"Sec-WebSocket-Extensions: " + extensions + b"\r\n"
    return head + b"\r\n"


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
    # A control frame carries at most 125 bytes: the code and 123 bytes of reason, cut on a character
    # boundary so the reason stays valid UTF-8 (a peer must fail the connection on an invalid one).
    raw = reason.encode()
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode()
    return frame(struct.pack("!H", code) + raw, OP_CLOSE)


def close_reply(payload: bytes) -> bytes:
    """The close frame that answers a client's (valid) close: its code echoed (RFC 6455 §5.5.1), else 1000."""
    return close_frame(int.from_bytes(payload[:2], "big") if payload else CLOSE_NORMAL)


OP_CONTINUATION = 0x0
OP_BINARY = 0x2
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

Message = tuple[int, str | bytes]


def is_valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame.

    RFC 6455 §7.4: 1000-1003 and 1007-1011 are defined; 1004 is reserved; 1005, 1006 and 1015 must never be
    sent; 3000-4999 are for libraries and applications. 1012-1014 (service restart, try again later, bad
    gateway) were registered with IANA after the RFC: Node's ``ws``, which the original server runs on,
    accepts them, and so do we (Autobahn|Testsuite 0.8.2 tests neither way). The rest of 0-2999 and
    5000 and up are invalid.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameError(ProtocolError):
    """The client broke RFC 6455; ``code`` is the close code to answer with.

    ``messages`` holds what :meth:`FrameReader.feed` parsed from the same data *before* the bad frame: they
    are valid and the client meant them, so the caller handles them first and then closes.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.messages: list[Message] = []


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
    ``OP_BINARY``/``OP_PING``/``OP_PONG`` with bytes, ``OP_CLOSE`` with the raw close payload (its length,
    code and UTF-8 reason checked; answer it with :func:`close_reply`). Fragmented messages are joined; a
    message larger than ``max_message`` bytes raises FrameError(1009) before it is buffered; every RFC 6455
    rule a server must enforce (masking, reserved bits, opcodes, control-frame size and fragmentation,
    continuation order, UTF-8, close payloads) raises FrameError with its close code.

    A FrameError carries in ``messages`` the good messages parsed before the bad frame in the same call:
    one TCP read often holds several frames, and the client's valid packets must not be lost because a
    later one was bad. After a FrameError the reader is spent (every later ``feed`` raises again); after a
    close frame it is finished (nothing later is parsed: RFC 6455 §5.5.1, the peer sends nothing after it).

    Reserved bits are refused here; :class:`protocol.deflate.DeflateFrameReader`, the reader of a connection
    that negotiated permessage-deflate, gives RSV1 its meaning through the ``_check_reserved_bits``,
    ``_too_big`` and ``_assemble`` hooks (which cost nothing on a frame without RSV bits under the bound).
    """

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._part_size = 0
        self._opcode: int | None = None  # opcode of the fragmented message in progress
        self._decoder: codecs.IncrementalDecoder | None = None  # set while that message is text
        self._text_parts: list[str] = []
        self._error: FrameError | None = None
        self.closed = False  # a close frame was returned

    def feed(self, data: bytes) -> list[Message]:
        if self._error is not None or self.closed:
            return self._spent()
        out: list[Message] = []
        try:
            self._parse(data, out)
        except FrameError as exc:
            exc.messages = out
            self._error = exc
            self._buffer.clear()
            raise
        return out

    def _spent(self) -> list[Message]:
        if self._error is not None:
            raise FrameError(self._error.code, str(self._error))
        return []

    def _parse(self, data: bytes, out: list[Message]) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            opcode, length = b0 & 0x0F, b1 & 0x7F
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
            if opcode not in _CONTROL_OPCODES and self._part_size + length > self._max and self._too_big(b0, length):
                raise FrameError(CLOSE_TOO_BIG, f"message over {self._max} bytes")
            start = pos + head + 4
            if end < start + length:
                break
            payload = unmask(memoryview(buf)[start : start + length], bytes(buf[pos + head : start]))
            pos = start + length
            if opcode == OP_CLOSE:
                _check_close(payload)
                out.append((OP_CLOSE, payload))
                self.closed = True
                buf.clear()
                return
            message = self._assemble(b0, opcode, payload)
            if message is not None:
                out.append(message)
        del buf[:pos]

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        if b0 & 0x70:
            self._check_reserved_bits(b0, opcode)
        if not b1 & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if opcode in _CONTROL_OPCODES:
            if not b0 & 0x80 or length > 125:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
        elif opcode not in _DATA_OPCODES:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _check_reserved_bits(self, b0: int, opcode: int) -> None:
        """A frame with RSV1-3 set: wrong unless an extension gave the bit a meaning (protocol/deflate.py)."""
        raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")

    def _too_big(self, b0: int, length: int) -> bool:
        """The message in progress and this frame's ``length`` pass ``max_message``: True refuses it (1009).

        Always, here; a compressed message is bounded by what it inflates to instead (protocol/deflate.py).
        """
        return True

    def _assemble(self, b0: int, opcode: int, payload: bytes) -> Message | None:
        """One frame's unmasked payload (``b0``: its first header byte) → a complete message, or None so far."""
        fin = bool(b0 & 0x80)
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
            if opcode == OP_TEXT:
                self._decoder = _utf8_decoder()
        self._part_size += len(payload)
        if self._decoder is not None:
            # A fragmented text message is decoded fragment by fragment, so invalid UTF-8 fails the
            # connection at the fragment that holds it (fail fast, RFC 6455 §8.1), not when the message ends.
            self._text_parts.append(_decode_part(self._decoder, payload, fin))
        else:
            self._parts.append(payload)
        if not fin:
            return None
        message: Message = (
            (OP_TEXT, "".join(self._text_parts)) if self._decoder is not None else (OP_BINARY, b"".join(self._parts))
        )
        self._opcode, self._decoder, self._parts, self._text_parts, self._part_size = None, None, [], [], 0
        return message


def _utf8_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")()


def _decode_part(decoder: codecs.IncrementalDecoder, payload: bytes, final: bool) -> str:
    try:
        return decoder.decode(payload, final)
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None


def _check_close(payload: bytes) -> None:
    """A close payload is empty, or a valid code (2 bytes) and a UTF-8 reason (RFC 6455 §5.5.1, §7.4)."""
    if not payload:
        return
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload (a code takes 2)")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None

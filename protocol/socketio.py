"""Socket.IO v5 packets, sans-IO (https://github.com/socketio/socket.io-protocol, v5).

Text form: ``<type>[<attachments>-][<namespace>,][<ack id>][<json>]``. Types: ``0`` CONNECT,
``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR, ``5`` BINARY_EVENT, ``6`` BINARY_ACK.
The JSON part is kept as raw text: the chat decodes it straight into typed Structs; :func:`decode_args` and
:func:`encode_args` are the generic path (any arguments, binary attachments as ``bytes``). A binary packet
(types 5 and 6) names ``N`` attachments, each sent next as one binary Engine.IO packet and referred to in the
JSON by a placeholder ``{"_placeholder": true, "num": i}``.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

import msgspec

from protocol.errors import SocketIOError

MAX_ACK_ID = 2**53  # JavaScript's safe-integer range: what socket.io-client can send


class SioType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_TYPES = tuple(SioType)  # by value: an index is cheaper than the enum's call, once per inbound packet
_DIGITS = re.compile(r"[0-9]*")  # the ack id: one C-level scan instead of a Python loop per digit


class SioPacket(msgspec.Struct, frozen=True, gc=False):
    type: SioType
    namespace: str = "/"
    ack_id: int | None = None
    data: str = ""
    """The JSON text after the header, undecoded ('' when absent)."""
    attachments: int = 0
    """How many binary attachments follow (types 5 and 6 only)."""
    binary: tuple[bytes, ...] = ()
    """The attachments, once they have all arrived (the hub assembles them)."""


def decode(text: str) -> SioPacket:
    """Parse one Socket.IO packet; raises SocketIOError for anything malformed."""
    if not text or not ("0" <= text[0] <= "6"):
        raise SocketIOError(f"unknown Socket.IO packet type in {text[:16]!r}")
    kind = _TYPES[ord(text[0]) - 48]
    i = 1
    n = len(text)
    attachments = 0
    if kind in (SioType.BINARY_EVENT, SioType.BINARY_ACK):
        dash = text.find("-", i)
        if dash == -1 or not text[i:dash].isdigit() or dash - i > 6:
            raise SocketIOError("binary packet without an attachment count")
        attachments = int(text[i:dash])
        i = dash + 1
    namespace = "/"
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        end = n if comma == -1 else comma
        namespace = text[i:end]
        i = n if comma == -1 else comma + 1
    start = i
    i = _DIGITS.match(text, i).end()  # type: ignore[union-attr]  # ``*`` always matches
    ack_id = None
    if i > start:
        if i - start > 16 or int(text[start:i]) > MAX_ACK_ID:
            raise SocketIOError("ack id out of range")
        ack_id = int(text[start:i])
    return SioPacket(kind, namespace, ack_id, text[i:], attachments)


def encode(
    kind: SioType, data: str = "", *, ack_id: int | None = None, namespace: str = "/", attachments: int = 0
) -> str:
    count = f"{attachments}-" if kind in (SioType.BINARY_EVENT, SioType.BINARY_ACK) else ""
    ns = "" if namespace == "/" else namespace + ","
    ack = "" if ack_id is None else str(ack_id)
    return f"{kind.value}{count}{ns}{ack}{data}"


_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


def _is_placeholder(value: dict[str, Any]) -> bool:
    return value.get("_placeholder") is True and type(value.get("num")) is int and len(value) == 2


def _fill(value: Any, binary: tuple[bytes, ...]) -> Any:
    if isinstance(value, list):
        return [_fill(item, binary) for item in value]
    if isinstance(value, dict):
        if _is_placeholder(value):
            num = value["num"]
            if not 0 <= num < len(binary):
                raise SocketIOError(f"placeholder {num} names no attachment")
            return binary[num]
        return {key: _fill(item, binary) for key, item in value.items()}
    return value


def decode_args(packet: SioPacket) -> list[Any]:
    """An EVENT's or ACK's arguments, attachments in place of their placeholders; SocketIOError if malformed.

    An event's array starts with its name (a string); an ack's may be empty.
    """
    try:
        args = _json_decoder.decode(packet.data)
    except msgspec.DecodeError as exc:
        raise SocketIOError(f"invalid JSON payload: {exc}") from None
    if not isinstance(args, list):
        raise SocketIOError("the payload is not an array")
    if packet.type in (SioType.EVENT, SioType.BINARY_EVENT) and not (args and isinstance(args[0], str)):
        raise SocketIOError("an event's first argument is its name")
    return _fill(args, packet.binary) if packet.binary else args


def _extract(value: Any, binary: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        binary.append(bytes(value))
        return {"_placeholder": True, "num": len(binary) - 1}
    if isinstance(value, (list, tuple)):
        return [_extract(item, binary) for item in value]
    if isinstance(value, dict):
        return {key: _extract(item, binary) for key, item in value.items()}
    return value


def encode_args(
    kind: SioType, args: list[Any], *, ack_id: int | None = None, namespace: str = "/"
) -> tuple[str, list[bytes]]:
    """An EVENT or ACK with ``args`` → its text packet and its attachments (``bytes`` become placeholders;
    with any, the type becomes BINARY_EVENT or BINARY_ACK)."""
    binary: list[bytes] = []
    data = _json_encoder.encode(_extract(args, binary)).decode()
    if not binary:
        return encode(kind, data, ack_id=ack_id, namespace=namespace), binary
    kind = SioType.BINARY_EVENT if kind in (SioType.EVENT, SioType.BINARY_EVENT) else SioType.BINARY_ACK
    return encode(kind, data, ack_id=ack_id, namespace=namespace, attachments=len(binary)), binary

"""Socket.IO v5 packets, sans-IO (https://github.com/socketio/socket.io-protocol, v5).

Text form: ``<type>[<attachments>-][<namespace>,][<ack id>][<json>]``. Types: ``0`` CONNECT,
``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR, ``5`` BINARY_EVENT, ``6`` BINARY_ACK.
Only the default namespace ``/`` exists here; packets for another namespace are parsed so they can be
refused properly. The JSON part is kept as raw text: events decode it straight into typed Structs.
"""

from __future__ import annotations

from enum import IntEnum

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


class SioPacket(msgspec.Struct, frozen=True):
    type: SioType
    namespace: str = "/"
    ack_id: int | None = None
    data: str = ""
    """The JSON text after the header, undecoded ('' when absent)."""


def decode(text: str) -> SioPacket:
    """Parse one Socket.IO packet; raises SocketIOError for anything malformed."""
    if not text or not ("0" <= text[0] <= "6"):
        raise SocketIOError(f"unknown Socket.IO packet type in {text[:16]!r}")
    kind = SioType(ord(text[0]) - 48)
    i = 1
    n = len(text)
    if kind in (SioType.BINARY_EVENT, SioType.BINARY_ACK):
        dash = text.find("-", i)
        if dash == -1 or not text[i:dash].isdigit():
            raise SocketIOError("binary packet without an attachment count")
        i = dash + 1
    namespace = "/"
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        end = n if comma == -1 else comma
        namespace = text[i:end]
        i = n if comma == -1 else comma + 1
    start = i
    while i < n and "0" <= text[i] <= "9":
        i += 1
    ack_id = None
    if i > start:
        if i - start > 16 or int(text[start:i]) > MAX_ACK_ID:
            raise SocketIOError("ack id out of range")
        ack_id = int(text[start:i])
    return SioPacket(kind, namespace, ack_id, text[i:])


def encode(kind: SioType, data: str = "", *, ack_id: int | None = None, namespace: str = "/") -> str:
    ns = "" if namespace == "/" else namespace + ","
    ack = "" if ack_id is None else str(ack_id)
    return f"{kind.value}{ns}{ack}{data}"

"""MinitalkChat's Socket.IO events as msgspec Structs: one tagged union per direction (contract §3.3-3.4).

Inbound events arrive as JSON arrays ``["send_message", {...}]``; each event is an ``array_like`` Struct
whose tag is the event name, so one decoder validates name and payload in a single pass (the hot path).
Only when that fails does :func:`decode_event` look closer, to pick the error text the original sends.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from protocol.errors import SocketIOError

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

MAX_CLIENT_MSG_ID_BYTES = 128  # contract §8

# The error texts of the original (contract §3.4), plus ours for cases where it crashed.
ERR_REQUIRED = "roomId and content are required"
ERR_NOT_MEMBER = "You are not a member of this chat room"
ERR_SEND_FAILED = "Failed to send message"
ERR_JOIN_FAILED = "Failed to join room"
ERR_LEAVE_FAILED = "Failed to leave room"
ERR_CLIENT_MSG_ID = f"clientMsgId must be a non-empty string of at most {MAX_CLIENT_MSG_ID_BYTES} bytes"


class SendMessageData(msgspec.Struct, frozen=True, gc=False):
    roomId: NonEmpty
    content: NonEmpty
    clientMsgId: NonEmpty | None = None


class RoomRef(msgspec.Struct, frozen=True, gc=False):
    roomId: NonEmpty


class SendMessage(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="send_message"):
    data: SendMessageData


class JoinRoom(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="join_room"):
    data: RoomRef


class LeaveRoom(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="leave_room"):
    data: RoomRef


ClientEvent = SendMessage | JoinRoom | LeaveRoom


class Rejected(msgspec.Struct, frozen=True):
    """A known event whose payload is not acceptable: answer with an ``error`` event carrying ``message``."""

    event: str
    message: str


class Ignored(msgspec.Struct, frozen=True):
    """An event nobody handles (the original ignores unknown events too)."""

    event: str


_decoder: msgspec.json.Decoder[ClientEvent] = msgspec.json.Decoder(ClientEvent)
_FAILED = {"send_message": ERR_SEND_FAILED, "join_room": ERR_JOIN_FAILED, "leave_room": ERR_LEAVE_FAILED}


def decode_event(data: str | bytes) -> ClientEvent | Rejected | Ignored:
    """The JSON array of an EVENT packet → a typed event, a rejection with its error text, or Ignored.

    Raises :class:`SocketIOError` when ``data`` is not JSON at all (a broken packet), and for nothing else:
    nesting too deep for the decoder (``RecursionError``, reached by ~1,000 ``[`` in under 2 KB) and bad
    UTF-8 are broken packets too, never an exception that escapes the connection.
    """
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError:
        return _classify(_decode_any(data))
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise SocketIOError(f"event is not JSON: {exc}") from None
    if isinstance(event, SendMessage) and event.data.clientMsgId is not None and not _id_fits(event.data.clientMsgId):
        return Rejected("send_message", ERR_CLIENT_MSG_ID)
    return event


def _decode_any(data: str | bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise SocketIOError(f"event is not JSON: {exc}") from None


def _id_fits(client_msg_id: str) -> bool:
    # Characters are at most 4 UTF-8 bytes each: only long ids need the encode.
    return len(client_msg_id) * 4 <= MAX_CLIENT_MSG_ID_BYTES or len(client_msg_id.encode()) <= MAX_CLIENT_MSG_ID_BYTES


def _classify(value: Any) -> Rejected | Ignored:
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        return Ignored("")
    name = value[0]
    if name not in _FAILED:
        return Ignored(name)
    payload = value[1] if len(value) > 1 else None
    if not isinstance(payload, dict):
        return Rejected(name, _FAILED[name])
    if name == "send_message":
        cmid = payload.get("clientMsgId")
        if cmid is not None and not (isinstance(cmid, str) and cmid and _id_fits(cmid)):
            return Rejected(name, ERR_CLIENT_MSG_ID)
        return Rejected(name, ERR_REQUIRED)
    if name == "join_room":
        return Rejected(name, ERR_NOT_MEMBER)  # no such room for a missing/invalid roomId, as the original
    return Rejected(name, ERR_LEAVE_FAILED)


# -- server → client -----------------------------------------------------------------------------------
class MessageOut(msgspec.Struct, frozen=True, gc=False):
    """The ``message`` broadcast: the original's fields in its order, then ``id`` and ``seq`` (contract §8)."""

    type: Literal["message"]
    roomId: str
    sender: str
    content: str
    timestamp: str
    id: str
    seq: int


class AckOk(msgspec.Struct, frozen=True, gc=False):
    id: str
    seq: int
    timestamp: str
    ok: bool = True


class AckError(msgspec.Struct, frozen=True, gc=False):
    error: str
    ok: bool = False


_encoder = msgspec.json.Encoder()


_MESSAGE_PREFIX = b'42["message",'


def message_packet(message: MessageOut) -> bytes:
    """The Socket.IO EVENT packet ``42["message",{...}]`` for one message, encoded once for every member."""
    return _MESSAGE_PREFIX + _encoder.encode(message) + b"]"


def event_packet(name: str, payload: Any) -> bytes:
    """A complete Engine.IO message packet carrying one Socket.IO EVENT: ``42["name",payload]``."""
    return b'42["' + name.encode() + b'",' + _encoder.encode(payload) + b"]"


def ack_packet(ack_id: int, payload: AckOk | AckError) -> bytes:
    return b"43" + str(ack_id).encode() + b"[" + _encoder.encode(payload) + b"]"


def error_packet(message: str) -> bytes:
    return event_packet("error", {"message": message})

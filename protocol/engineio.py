"""Engine.IO v4 packets and polling payloads, sans-IO.

A packet is one type digit and its data: ``0`` open, ``1`` close, ``2`` ping, ``3`` pong, ``4`` message,
``5`` upgrade, ``6`` noop. Over websocket one text frame carries one packet; over polling, packets are
joined with the record separator ``\\x1e``. Binary packets (``b<base64>`` on polling, binary frames on
websocket) carry Socket.IO attachments (or an Engine.IO app's bytes): on polling they decode as ``BINARY``
with their base64 text as data.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec

from protocol.errors import EngineIOError

SEPARATOR = "\x1e"


class PacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


BINARY = -1  # type of a decoded binary packet; its data is the base64 text (polling)

# Pre-encoded packets the server sends often.
PING = "2"
PONG_PROBE = "3probe"
NOOP = "6"
CLOSE = "1"


class OpenPayload(msgspec.Struct, frozen=True):
    """The handshake packet's JSON (contract §3.5): every field is required by some client."""

    sid: str
    upgrades: list[str]
    pingInterval: int
    pingTimeout: int
    maxPayload: int


_open_encoder = msgspec.json.Encoder()


def encode_open(payload: OpenPayload) -> str:
    return "0" + _open_encoder.encode(payload).decode()


def decode_packet(text: str) -> tuple[int, str]:
    """One text packet → (type, data). Raises EngineIOError for anything else."""
    if not text:
        raise EngineIOError("empty Engine.IO packet")
    head = text[0]
    if head == "b":
        return BINARY, text[1:]
    if not ("0" <= head <= "6"):
        raise EngineIOError(f"unknown Engine.IO packet type {head!r}")
    return ord(head) - 48, text[1:]


def decode_payload(body: str, *, max_packets: int) -> list[tuple[int, str]]:
    """A polling POST body → its packets, in order. Bounded by the caller's byte limit and ``max_packets``."""
    parts = body.split(SEPARATOR)
    if len(parts) > max_packets:
        raise EngineIOError(f"too many packets in one payload (limit {max_packets})")
    return [decode_packet(part) for part in parts]


def encode_payload(packets: list[str]) -> str:
    return SEPARATOR.join(packets)

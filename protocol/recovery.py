"""Socket.IO connection state recovery, backed by the durable log: pids, offsets and their wire forms. Sans-IO.

What socket.io-client (>= 4.6) does, and what we answer (its ``socket.ts``):
- a CONNECT reply with a ``pid`` (``40{"sid":…,"pid":…}``) turns recovery on for that socket;
- after each event whose last argument is a string, that string becomes the socket's *offset*
  (``emitEvent``: ``if (this._pid && typeof args[args.length - 1] === "string") this._lastOffset = …``);
- on a reconnect the socket sends ``40{"pid":…,"offset":…}`` (no ``offset`` if it got no event), and calls
  itself ``recovered`` when the reply carries the same ``pid`` (``onconnect``).

The wire design both kinds of client accept: offsets travel in an event of their own,
``42["minitalk:offset","<offset>"]``, never as an extra argument of ``message`` (python-socketio calls a
handler with every argument, and the load test's one-argument handlers would raise). No client listens to
that event; socket.io-client reads its string all the same. A ``pid`` in the CONNECT reply is ignored by
python-socketio and by socket.io-client before 4.6.

Offsets name a place in the log, so they mean the same after a server restart:
- ``g<pk>``: every message of my rooms with a pk up to ``pk`` was delivered (sent after each committed batch
  to the members at the head, once all of the batch's rooms went out to them);
- ``c<room>:<seq>,<room>:<seq>…``: exactly these per-room cursors (sent to a member catching up from the log,
  whose rooms stand at different places).
A ``pid`` is ``<random>.<pk>``: the head when the socket first connected, for a socket that got no event.
Anything malformed is no offset at all: the client is served as a new connection (``recovered`` false).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import msgspec

OFFSET_EVENT = "minitalk:offset"
MAX_PK = 2**53 - 1  # what a JavaScript number holds exactly; also our bound on seqs
MAX_OFFSET_CHARS = 64 * 1024  # a member of ~1,000 rooms; anything longer is not one of ours
_ROOM_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")

_encoder = msgspec.json.Encoder()


class Position(msgspec.Struct, frozen=True):
    """Where a reconnecting client stands: a log watermark, or explicit per-room cursors."""

    pk: int | None = None
    cursors: dict[str, int] | None = None


def new_pid(pk: int) -> str:
    return f"{secrets.token_urlsafe(12)}.{pk}"


def watermark_offset(pk: int) -> str:
    return f"g{pk}"


def cursors_offset(cursors: Mapping[str, int]) -> str:
    return "c" + ",".join(f"{room}:{seq}" for room, seq in cursors.items())


def offset_packet(offset: str) -> bytes:
    """The Engine.IO message packet of the offset event."""
    return b'42["' + OFFSET_EVENT.encode() + b'",' + _encoder.encode(offset) + b"]"


def connect_reply(sid: str, pid: str | None) -> bytes:
    body: dict[str, str] = {"sid": sid} if pid is None else {"sid": sid, "pid": pid}
    return b"40" + _encoder.encode(body)


def recovery_request(connect_data: str) -> tuple[str, Position] | None:
    """A CONNECT packet's JSON → (pid, where the client stands), or None when it asks for no recovery."""
    if not connect_data.startswith("{") or len(connect_data) > MAX_OFFSET_CHARS + 1024:
        return None
    try:
        auth: Any = msgspec.json.decode(connect_data)
    except (msgspec.DecodeError, RecursionError):
        return None
    pid = auth.get("pid") if isinstance(auth, dict) else None
    if not isinstance(pid, str):
        return None
    offset = auth.get("offset")
    position = parse_offset(offset) if isinstance(offset, str) else None
    if position is None:
        position = pid_position(pid)
    return None if position is None else (pid, position)


def pid_position(pid: str) -> Position | None:
    """The watermark a pid of ours carries: where the socket stood when it first connected."""
    _, dot, tail = pid.rpartition(".")
    pk = _bounded_int(tail) if dot else None
    return None if pk is None else Position(pk=pk)


def parse_offset(offset: str) -> Position | None:
    if not offset or len(offset) > MAX_OFFSET_CHARS:
        return None
    kind, body = offset[0], offset[1:]
    if kind == "g":
        pk = _bounded_int(body)
        return None if pk is None else Position(pk=pk)
    if kind != "c":
        return None
    cursors: dict[str, int] = {}
    for part in body.split(",") if body else ():
        room, colon, seq_text = part.rpartition(":")
        seq = _bounded_int(seq_text)
        if not colon or seq is None or not room or not _ROOM_ID_CHARS.issuperset(room):
            return None
        cursors[room] = seq
    return Position(cursors=cursors)


def _bounded_int(text: str) -> int | None:
    if not text or len(text) > 16 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_PK else None

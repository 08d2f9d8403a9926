"""The load generator's websocket framing: client frames, and the pongs a chunk from the server asks for.

The one load generator is ``bench/client.py`` (``python -m bench``); its checking members, its count-only reader
thread (``bench/countreader.py``) and its senders share these.
"""

from __future__ import annotations

import struct


def client_frame(payload: bytes) -> bytes:
    """A masked text frame. The mask key is zero: legal on the wire, and this tool only targets loopback."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + b"\x00\x00\x00\x00" + payload


PONG = client_frame(b"3")
PING_FRAME = b"\x81\x012"
# A websocket-level ping (opcode 9, unmasked from a server). uvicorn (under the python-socketio peer) sends one
# every 20 s and closes a connection whose pong has not come 20 s later; browsers answer them unasked, and so
# must the load generator, or every run past 40 s ends with the peer closing every client.
WS_PING = b"\x89"


def ws_pongs(data: bytes | bytearray) -> bytes:
    """Masked pong frames echoing the payload of each websocket ping in a chunk (RFC 6455 §5.5.3).

    A byte 0x89 that is not a frame header (these messages are ASCII JSON, so in practice there is none) only
    costs an unsolicited pong, which §5.5.3 allows. A ping split across two reads is missed; the next one, 20 s
    later, is answered.
    """
    out = []
    at = data.find(WS_PING)
    while at != -1 and at + 1 < len(data):
        n = data[at + 1]
        payload = data[at + 2 : at + 2 + n]
        if n <= 125 and len(payload) == n:  # a control frame's payload is at most 125 bytes
            out.append(bytes((0x8A, 0x80 | n)) + b"\x00\x00\x00\x00" + payload)
        at = data.find(WS_PING, at + 1)
    return b"".join(out)


def pongs_for(data: bytes | bytearray) -> bytes:
    """What a chunk from the server asks to be answered: Engine.IO pings and websocket pings."""
    return (PONG if PING_FRAME in data else b"") + (ws_pongs(data) if WS_PING in data else b"")

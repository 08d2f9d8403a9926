"""A websocket client of the ``websockets`` library (its sans-IO ``ClientProtocol``) over a trio TCP stream.

The library offers permessage-deflate as it does by default (``permessage-deflate; client_max_window_bits``),
decompresses what the server sends, and compresses every message it sends (it has no threshold). Beside it,
every server frame's first header byte is read from the raw bytes and kept with the message the library decoded
from it (``received``), so a test sees which messages really came compressed (RSV1), not only that the extension
was agreed on. ``send_raw`` writes bytes the library never would (a bomb), straight to the socket.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import msgspec
import trio
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate, enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

RECEIVE_BYTES = 65536


class DeflateClient:
    def __init__(self, stream: trio.SocketStream, proto: ClientProtocol) -> None:
        self.stream = stream
        self.proto = proto
        self.response: Response | None = None
        # Every text message from the server, with its frame's first header byte (FIN, RSV1-3, opcode).
        self.received: list[tuple[int, str]] = []
        self._first_bytes: deque[int] = deque()  # of frames split from the raw bytes, not yet decoded
        self._raw = bytearray()  # server bytes after the handshake's head, not yet split into frames
        self._head_done = False
        self._texts: list[str] = []

    @classmethod
    async def connect(cls, url: str, token: str, *, compress: bool = True) -> DeflateClient:
        ws_url = url.replace("http://", "ws://") + f"/socket.io/?EIO=4&transport=websocket&token={token}"
        extensions = enable_client_permessage_deflate(None) if compress else None
        proto = ClientProtocol(parse_uri(ws_url), extensions=extensions, max_size=None)
        stream = await trio.open_tcp_stream("127.0.0.1", parse_uri(ws_url).port)
        client = cls(stream, proto)
        proto.send_request(proto.connect())
        await client._flush()
        with trio.fail_after(10):  # a hang guard
            while client.response is None:
                await client._receive()
        assert proto.handshake_exc is None, proto.handshake_exc
        return client

    @property
    def deflate(self) -> PerMessageDeflate | None:
        """The permessage-deflate the handshake agreed on, as the library understood the answer."""
        found = [e for e in self.proto.extensions if isinstance(e, PerMessageDeflate)]
        return found[0] if found else None

    async def socketio_connect(self) -> None:
        opened = await self.packet()
        assert opened.startswith("0"), opened
        await self.send("40")
        reply = await self.packet()
        assert reply.startswith('40{"sid":'), reply

    async def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        await self._flush()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def packet(self) -> str:
        """The next Engine.IO packet (a text message), answering Engine.IO pings on the way."""
        with trio.fail_after(15):  # a hang guard
            while True:
                while self._texts:
                    text = self._texts.pop(0)
                    if text == "2":
                        await self.send("3")
                        continue
                    return text
                if self.proto.close_rcvd is not None:
                    raise ConnectionError(f"closed by the server: {self.proto.close_rcvd}")
                await self._receive()

    async def event(self, name: str) -> Any:
        """The data of the next Socket.IO event called ``name`` (others are skipped)."""
        while True:
            text = await self.packet()
            if text.startswith("42"):
                event, data = msgspec.json.decode(text[2:])
                if event == name:
                    return data

    async def wait_closed(self) -> int | None:
        """Read until the server's close frame; its code."""
        with trio.fail_after(15):  # a hang guard
            while self.proto.close_rcvd is None:
                if not await self._receive():
                    break
        return None if self.proto.close_rcvd is None else self.proto.close_rcvd.code

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _receive(self) -> bool:
        data = await self.stream.receive_some(RECEIVE_BYTES)
        if not data:
            self.proto.receive_eof()
            return False
        self._note_frames(data)
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                self.response = event
            elif isinstance(event, Frame):
                b0 = self._first_bytes.popleft()  # the library's frames are the raw ones, in the same order
                if event.opcode is Opcode.TEXT:
                    assert event.fin, "the server sends every message as one frame"
                    text = bytes(event.data).decode()
                    self.received.append((b0, text))
                    self._texts.append(text)
        await self._flush()
        return True

    async def _flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if data:
            await self.stream.send_all(data)

    def _note_frames(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        if not self._head_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            del raw[: end + 4]
            self._head_done = True
        while len(raw) >= 2:
            n, head = raw[1] & 0x7F, 2
            if n == 126:
                if len(raw) < 4:
                    return
                (n,), head = struct.unpack_from("!H", raw, 2), 4
            elif n == 127:
                if len(raw) < 10:
                    return
                (n,), head = struct.unpack_from("!Q", raw, 2), 10
            if len(raw) < head + n:
                return
            self._first_bytes.append(raw[0])
            del raw[: head + n]

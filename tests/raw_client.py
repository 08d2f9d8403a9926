"""A bare Engine.IO/Socket.IO client over trio-websocket, for wire-level tests that need full control."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from protocol.recovery import OFFSET_EVENT


class RawClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.open: dict[str, Any] = {}

    async def packet(self) -> str:
        message = await self.ws.get_message()
        assert isinstance(message, str)
        return message

    async def handshake(self, *, connect: bool = True) -> None:
        first = await self.packet()
        assert first.startswith("0"), first
        self.open = msgspec.json.decode(first[1:])
        if connect:
            await self.ws.send_message("40")
            reply = await self.packet()
            assert reply.startswith('40{"sid":'), reply

    async def emit(self, event: str, data: Any, *, ack_id: int | None = None) -> None:
        ack = "" if ack_id is None else str(ack_id)
        await self.ws.send_message("42" + ack + msgspec.json.encode([event, data]).decode())

    async def next_event(self, *, offsets: bool = False) -> tuple[str, Any]:
        """The next Socket.IO event or ack, answering pings on the way; recovery offsets only if asked for."""
        while True:
            text = await self.packet()
            if text == "2":
                await self.ws.send_message("3")
            elif text.startswith("42"):
                name, data = msgspec.json.decode(text[2:])
                if name == OFFSET_EVENT and not offsets:
                    continue
                return name, data
            elif text.startswith("43"):
                bracket = text.index("[")
                return "ack:" + text[2:bracket], msgspec.json.decode(text[bracket:])[0]


@asynccontextmanager
async def raw_client(url: str, token: str | None, *, connect: bool = True, **kwargs: Any) -> AsyncIterator[RawClient]:
    query = "EIO=4&transport=websocket" + (f"&token={token}" if token else "")
    ws_url = url.replace("http://", "ws://") + "/socket.io/?" + query
    async with open_websocket_url(ws_url, **kwargs) as ws:
        client = RawClient(ws)
        try:
            with trio.fail_after(10):
                await client.handshake(connect=connect)
            yield client
        finally:
            # trio-websocket 0.12's client never closes its TCP stream when the server completes the close
            # handshake first (on EOF it only aborts sockets not yet CLOSED), so we close it here.
            await ws._stream.aclose()

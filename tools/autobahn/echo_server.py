"""An echo websocket server for Autobahn|Testsuite's fuzzingclient, built on the production frame code.

What is tested is ours: the handshake helpers, :class:`~protocol.websocket.FrameReader`, ``frame`` and
``close_frame`` are the ones ``server/ws_endpoint.py`` runs, and so is permessage-deflate (cases 12 and 13):
the agreement (:class:`~protocol.deflate.Compression`), :class:`~protocol.deflate.DeflateFrameReader` and the
:class:`~protocol.deflate.Deflater` that frames what goes out. A case that fails here fails there. Only the
Engine.IO/Socket.IO layer is left out: text and binary messages are echoed as they came. The compression
threshold is 0 here (the server's default is 1024 bytes): every echo is deflated, so the compressor is
checked on every message size the cases send, and one that would not shrink goes plain, as in the server.

Loopback only. ``--port 0`` (the default) takes a free port and prints it on the first stdout line, so
the runner (``tools/autobahn/run.py``) never collides with another server on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

import h11
import trio

from protocol.deflate import Compression, DeflateFrameReader
from protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    close_frame,
    close_reply,
    frame,
    handshake_response,
    header_value,
    is_upgrade,
)

# Autobahn's case 9 is excluded by the spec, but cases 1-7 send up to 65 KiB messages (12-13: 128 KiB); 16 MiB is what
# its own servers accept, so no case is refused for size.
MAX_MESSAGE = 16 * 1024 * 1024
RECEIVE_BYTES = 65536
# permessage-deflate as the server does it, with a threshold of 0 (see above).
COMPRESSION = Compression(enabled=True, threshold=0)


async def _read_head(stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event, conn.trailing_data[0]
        if event is not h11.NEED_DATA:
            return None
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return None
        conn.receive_data(data)


async def _accept(
    stream: trio.SocketStream, key: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[FrameReader, Callable[[bytes, int], bytes]]:
    """Answer the handshake, with permessage-deflate when offered; the connection's reader and framer."""
    agreed = COMPRESSION.agree(headers)
    if agreed is None:
        await stream.send_all(handshake_response(key))
        return FrameReader(MAX_MESSAGE), frame
    extensions, deflater = agreed
    await stream.send_all(handshake_response(key, extensions))
    return DeflateFrameReader(MAX_MESSAGE), deflater.frame


async def handle(stream: trio.SocketStream) -> None:
    async with stream:
        head = await _read_head(stream)
        if head is None:
            return
        request, data = head
        key = header_value(request.headers.raw_items(), b"sec-websocket-key")
        if key is None or not is_upgrade(request.method, request.headers.raw_items()):
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        reader, out = await _accept(stream, key, request.headers.raw_items())
        while True:
            # The same order as server/ws_endpoint.py: what came before a bad frame first, then the close.
            error: FrameError | None = None
            try:
                messages = reader.feed(data)
            except FrameError as exc:
                messages, error = exc.messages, exc
            for opcode, payload in messages:
                if opcode == OP_TEXT:
                    assert isinstance(payload, str)
                    await stream.send_all(out(payload.encode(), OP_TEXT))
                elif opcode == OP_BINARY:
                    assert isinstance(payload, bytes)
                    await stream.send_all(out(payload, OP_BINARY))
                elif opcode == OP_PING:
                    assert isinstance(payload, bytes)
                    await stream.send_all(frame(payload, OP_PONG))
                elif opcode == OP_CLOSE:
                    assert isinstance(payload, bytes)
                    await stream.send_all(close_reply(payload))
                    return
            if error is not None:
                await stream.send_all(close_frame(error.code, str(error)))
                return
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return


async def _handle_quietly(stream: trio.SocketStream) -> None:
    # A fuzzing client drops connections mid-write on purpose: that is its business, not an error here.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await handle(stream)


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(_handle_quietly, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args()
    try:
        trio.run(main, args.port)
    except KeyboardInterrupt:
        sys.exit(0)

"""The websocket hot path: ``GET /socket.io/?EIO=4&transport=websocket`` on a raw trio stream.

No ASGI in between: the front door hands over the socket with the parsed request head. We answer the
handshake ourselves (with permessage-deflate when the client offers it and ``--ws-compression`` is on:
protocol/deflate.py), parse inbound frames with the sans-IO :class:`~protocol.websocket.FrameReader` (its
:class:`~protocol.deflate.DeflateFrameReader` when compression was agreed), and write everything outbound
through the connection's :class:`Outbox`. (wsproto parsed inbound frames at first; it was 36% of the send path's
CPU, measured with py-spy, mostly its per-byte unmasking: see docs/architecture.md.)
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import h11
import msgspec
import trio

from protocol import engineio
from protocol.deflate import DeflateFrameReader, Deflater
from protocol.engineio_session import Upgrade
from protocol.errors import EngineIOError
from protocol.websocket import (
    CLOSE_PROTOCOL_ERROR,
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
)
from server.hub import Hub
from server.outbox import Outbox
from server.session import Session

log = logging.getLogger(__name__)

RECEIVE_BYTES = 65536
CLOSE_WAIT = 5.0  # seconds a refused websocket has to answer our close frame: a client's round trip, with slack


def engineio_error(code: int, message: str, status: int = 400) -> bytes:
    """An HTTP error reply in engine.io's shape: ``{"code": n, "message": "..."}``."""
    body = msgspec.json.encode({"code": code, "message": message})
    reason = {400: b"Bad Request", 403: b"Forbidden", 503: b"Service Unavailable"}.get(status, b"Error")
    return (
        b"HTTP/1.1 " + str(status).encode() + b" " + reason + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )


def _query(target: bytes) -> dict[str, str]:
    parsed = parse_qs(urlsplit(target.decode("latin-1")).query)
    return {key: values[0] for key, values in parsed.items()}


class WebSocketEndpoint:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def serve(self, stream: trio.SocketStream, request: h11.Request, trailing: bytes) -> None:
        try:
            await self._serve(stream, request, trailing)
        except Exception as exc:  # the handshake's error boundary; the session has its own below
            self._hub.connection_failed(None, exc, "websocket handshake")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream, request: h11.Request, trailing: bytes) -> None:
        hub = self._hub
        query = _query(request.target)
        key = header_value(request.headers, b"sec-websocket-key")
        if query.get("EIO") != "4":
            await stream.send_all(engineio_error(5, "Unsupported protocol version"))
            return
        if key is None or header_value(request.headers, b"sec-websocket-version") != b"13":
            await stream.send_all(engineio_error(3, "Bad request"))
            return
        sid = query.get("sid")
        if sid is not None:
            session = hub.sessions.get(sid)
            if session is None:
                await stream.send_all(engineio_error(1, "Session ID unknown"))
                return
            if not session.websocket_opened():
                # Already upgrading or upgraded: engine.io accepts this websocket and closes it at once, so
                # a client library sees a close, not a refused handshake.
                await stream.send_all(handshake_response(key) + close_frame(1000))
                with trio.move_on_after(CLOSE_WAIT):  # let the client answer the close before the FIN
                    await stream.receive_some(RECEIVE_BYTES)
                return
        else:
            # The token: query parameter first, else the raw Authorization header (contract §2).
            raw_auth = header_value(request.headers, b"authorization")
            token = query.get("token") or (raw_auth.decode("latin-1") if raw_auth else None)
            new_session = hub.open_session(token, websocket=True, address=_peer(stream))
            if new_session is None:
                await stream.send_all(engineio_error(3, "Server at its connection limit", 503))
                return
            session = new_session
        await self._run_connection(stream, session, request, key, trailing, probing=sid is not None)

    async def _run_connection(
        self,
        stream: trio.SocketStream,
        session: Session,
        request: h11.Request,
        key: bytes,
        trailing: bytes,
        *,
        probing: bool,
    ) -> None:
        hub = self._hub
        settings = hub.settings
        agreed = hub.compression.agree(request.headers)
        outbox = Outbox(
            stream.socket.fileno(),
            hub.flusher,
            max_bytes=settings.outbox_max_bytes,
            max_messages=settings.outbox_max_messages,
            on_overflow=lambda reason: hub.overflowed(session, reason),
        )
        deflate: Deflater | None = None
        if agreed is not None:
            extensions, deflate = agreed
            outbox.push(handshake_response(key, extensions))
            hub.compression.connections += 1
        else:
            outbox.push(handshake_response(key))
        try:
            reason = await self._connection(stream, session, outbox, trailing, probing=probing, deflate=deflate)
        except Exception as exc:  # one connection's error boundary: its fault is its own problem
            hub.connection_failed(session, exc, "websocket connection")
            return
        finally:
            session.websocket_closed(upgraded=session.ws is outbox)  # a failed probe: back to polling
            if deflate is not None:
                hub.compression.connections -= 1
        if session.ws is outbox:
            hub.close_session(session, reason)

    async def _connection(
        self,
        stream: trio.SocketStream,
        session: Session,
        outbox: Outbox,
        trailing: bytes,
        *,
        probing: bool,
        deflate: Deflater | None,
    ) -> str:
        hub = self._hub
        reason = "client went away"
        with trio.CancelScope() as scope:
            if not probing:
                outbox.push(frame(hub.open_packet(session, upgrades=[])))
                session.attach_websocket(outbox, scope, deflate)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.run_writer)
                try:
                    reason = await self._read_loop(
                        stream, session, outbox, scope, trailing, probing=probing, deflate=deflate
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    reason = "connection lost"
                finally:
                    nursery.cancel_scope.cancel()
        return reason

    async def _read_loop(
        self,
        stream: trio.SocketStream,
        session: Session,
        outbox: Outbox,
        scope: trio.CancelScope,
        trailing: bytes,
        *,
        probing: bool,
        deflate: Deflater | None,
    ) -> str:
        """Read frames until the client leaves or breaks the protocol; returns why the connection ended."""
        max_bytes = self._hub.settings.max_packet_bytes
        # A compressed message is bounded by what it inflates to: max_packet_bytes, whatever its ratio.
        reader = FrameReader(max_bytes) if deflate is None else DeflateFrameReader(max_bytes)
        data = trailing  # frames that arrived together with the handshake come first
        while True:
            bad_frame: FrameError | None = None
            try:
                messages = reader.feed(data)
            except FrameError as exc:
                # The frames before the bad one came in the same read and are valid: handle them, then close.
                messages, bad_frame = exc.messages, exc
            for opcode, payload in messages:
                if opcode == OP_TEXT:
                    assert isinstance(payload, str)
                    if probing:
                        step = session.on_upgrade_packet(payload, outbox, scope, deflate)
                        if step is Upgrade.FAILED:
                            return self._close(outbox, CLOSE_PROTOCOL_ERROR, "unexpected packet during upgrade")
                        probing = step is not Upgrade.UPGRADED
                        continue
                    error = await self._on_text(session, payload)
                    if error is not None:
                        return self._close(outbox, CLOSE_PROTOCOL_ERROR, error)
                elif opcode == OP_PING:
                    assert isinstance(payload, bytes)
                    outbox.push(frame(payload, OP_PONG))
                elif opcode == OP_CLOSE:
                    assert isinstance(payload, bytes)
                    outbox.push_close(close_reply(payload))
                    outbox.drain_best_effort()
                    return "websocket closed by client"
                elif opcode == OP_BINARY and not probing:
                    assert isinstance(payload, bytes)
                    await self._on_binary(session, payload)
            if bad_frame is not None:
                return self._close(outbox, bad_frame.code, str(bad_frame))
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return "client went away"

    async def _on_text(self, session: Session, text: str) -> str | None:
        """One Engine.IO packet; returns a reason to close when it is not one."""
        try:
            kind, payload = engineio.decode_packet(text)
        except EngineIOError as exc:
            return str(exc)
        if session.ws is not None:
            # Websocket-only now (polls are refused after the upgrade): this task is the one reader, so
            # packets are already handled in order, and the lock would only cost time.
            await self._hub.on_packet(session, kind, payload)
        else:
            async with session.inbound:
                await self._hub.on_packet(session, kind, payload)
        return None

    async def _on_binary(self, session: Session, data: bytes) -> None:
        """One binary Engine.IO packet (a Socket.IO attachment, or an Engine.IO app's bytes)."""
        if session.ws is not None:
            await self._hub.on_binary(session, data)
        else:
            async with session.inbound:
                await self._hub.on_binary(session, data)

    @staticmethod
    def _close(outbox: Outbox, code: int, reason: str) -> str:
        log.info("closing websocket: %s", reason)
        outbox.push_close(close_frame(code, reason))
        outbox.drain_best_effort()
        return reason


def _peer(stream: trio.SocketStream) -> str | None:
    """The client's IP address (for the connection log); None when the socket no longer knows it."""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) else None

"""The reference servers of the Socket.IO and Engine.IO conformance suites, on one port (docs/conformance.md).

``python -m tests.conformance --port PORT``: at ``/socket.io/`` the socket.io-protocol README's app (namespaces
``/`` and ``/custom``: ``auth`` with the CONNECT's payload on connect, ``message`` → ``message-back`` with the same
arguments, ``message-with-ack`` acked with them), at ``/engine.io/`` the engine.io-protocol README's echo.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import msgspec
import trio

from protocol.socketio import SioPacket, decode_args
from server.config import Config
from server.hub import Hub
from server.service import MinitalkServer
from server.session import Session


class Reference:
    """One namespace of the socket.io-protocol reference app."""

    def __init__(self, hub: Hub, namespace: str) -> None:
        self.hub, self.namespace = hub, namespace

    async def on_connect(self, session: Session, data: str) -> None:
        auth: Any = msgspec.json.decode(data) if data else {}
        self.hub.accept(session, self.namespace)
        # The suite's ws 8.5 client emits every message of one read at once, and listens for `auth` only
        # after the CONNECT reply: so `auth` must come in a later read, as engine.io's next write would.
        await trio.sleep(0.02)
        self.hub.emit(session, ["auth", auth], namespace=self.namespace)

    async def on_event(self, session: Session, packet: SioPacket) -> None:
        name, *args = decode_args(packet)
        if name == "message":
            self.hub.emit(session, ["message-back", *args], namespace=self.namespace)
        elif name == "message-with-ack" and packet.ack_id is not None:
            self.hub.emit(session, args, namespace=self.namespace, ack_id=packet.ack_id, ack=True)


class Echo:
    """The engine.io-protocol reference app: every message and binary packet straight back."""

    async def on_message(self, session: Session, data: str) -> None:
        session.send(b"4" + data.encode())

    async def on_binary(self, session: Session, data: bytes) -> None:
        session.send_binary(data)


def conformance_server(port: int) -> MinitalkServer:
    config = Config(
        port=port,
        database="sqlite://:memory:",
        ping_interval=0.3,
        ping_timeout=0.2,
        connect_timeout=1.0,
        max_packet_bytes=1_000_000,
    )
    server = MinitalkServer(config, engine_apps={"/engine.io/": Echo()})
    for namespace in ("/", "/custom"):
        server.hub.mount(namespace, Reference(server.hub, namespace))
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    logging.basicConfig(level=logging.WARNING)
    trio.run(conformance_server(parser.parse_args().port).run)


if __name__ == "__main__":
    main()

"""Engine.IO long-polling on ``/socket.io/`` (or another hub's path) through the quart-trio app, and ``GET /metrics``.

Polling is the slow path: every client starts on it (contract §3.6-1) and most leave it within a few
round trips by upgrading to websocket; a polling-only client keeps using it. Going through hypercorn
costs a little per request and buys a correct HTTP/1.1 stack for free.
"""

from __future__ import annotations

import msgspec
import trio
from quart import Blueprint, Response, request

from protocol import engineio
from protocol.engineio_session import Poll
from protocol.errors import EngineIOError
from server.hub import Hub
from server.metrics import Metrics
from server.session import PollRefused, Session

_TEXT = "text/plain; charset=UTF-8"


def _error(code: int, message: str, status: int = 400) -> Response:
    return Response(
        msgspec.json.encode({"code": code, "message": message}), status=status, content_type="application/json"
    )


def polling_routes(hub: Hub, metrics: Metrics | None, *, path: str = "/socket.io/") -> Blueprint:
    """Polling for ``hub`` on ``path``; with ``metrics``, ``GET /metrics`` too."""
    bp = Blueprint(
        "engineio" if path == "/socket.io/" else "engineio" + "".join(c if c.isalnum() else "_" for c in path), __name__
    )
    max_packets = max(16, hub.settings.max_packet_bytes // 2)  # POSTs are bounded by bytes (§3.6-7)

    # Every method reaches the route so that a handshake with another method gets engine.io's 400 (not 404).
    @bp.route(path, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def engineio_polling() -> Response:
        args = request.args
        if args.get("EIO") != "4":
            return _error(5, "Unsupported protocol version")
        if args.get("transport") != "polling":
            return _error(0, "Transport unknown")
        sid = args.get("sid")
        if sid is None:
            return await handshake()
        session = hub.sessions.get(sid)
        # A session whose timer ran out is gone now, even if the heartbeat task has not woken yet.
        if session is None or not hub.heartbeat(session, trio.current_time()):
            return _error(1, "Session ID unknown")
        if request.method == "GET":
            return await poll(session)
        if request.method != "POST" or session.ws is not None:
            return _error(3, "Bad request")
        data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            packets = engineio.decode_payload(data.decode("utf-8"), max_packets=max_packets)
        except (UnicodeDecodeError, EngineIOError) as exc:
            hub.close_session(session, f"bad polling payload: {exc}")
            return _error(3, "Bad request")
        try:
            async with session.inbound:
                for kind, payload in packets:
                    await hub.on_packet(session, kind, payload)
                    if session.closed:
                        break
        except Exception as exc:  # one session's error boundary: its fault is its own problem
            hub.connection_failed(session, exc, "polling request")
            return _error(3, "Internal server error", 500)
        return Response(b"ok", content_type="text/html")

    async def poll(session: Session) -> Response:
        try:
            return Response(await session.poll(), content_type=_TEXT)
        except PollRefused as refused:
            if refused.action is Poll.TWO_POLLS:
                hub.close_session(session, session.close_reason)
            elif refused.action is Poll.GONE:
                return _error(1, "Session ID unknown")
            return _error(3, "Bad request")  # two polls at once, or the session moved to websocket

    async def handshake() -> Response:
        if request.method != "GET":
            return _error(2, "Bad handshake method")
        # The token: query parameter first, else the raw Authorization header (contract §2).
        token = request.args.get("token") or request.headers.get("Authorization")
        session = hub.open_session(token, address=request.remote_addr)
        if session is None:
            return _error(3, "Server at its connection limit", 503)
        return Response(hub.open_packet(session, upgrades=["websocket"]), content_type=_TEXT)

    if metrics is not None:
        registry = metrics

        @bp.get("/metrics")
        async def prometheus_metrics() -> Response:
            return Response(registry.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    return bp

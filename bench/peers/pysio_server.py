"""Peer (a): MinitalkChat's chat events on python-socketio's ``AsyncServer`` under uvicorn, the idiomatic way.

In-memory users and rooms, nothing persisted. Only what the benchmark uses: REST signup-batch, login-batch,
POST /api/chatrooms-batch and /health; Socket.IO auth by ``?token=``, auto-join on connect, join_room, leave_room,
send_message (membership check, broadcast to the room including the sender, and an ack when asked). Run with
``uvicorn bench.peers.pysio_server:app``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import jwt
import socketio

SECRET = os.environ.get("JWT_SECRET", "your-secret-key-for-the-benchmark-peer")
sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
users: dict[str, str] = {}
rooms: dict[str, dict[str, Any]] = {}
rooms_of: dict[str, set[str]] = {}


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
    token = parse_qs(environ.get("QUERY_STRING", "")).get("token", [None])[0]
    try:
        username = jwt.decode(token or "", SECRET, algorithms=["HS256"])["username"]
    except (jwt.PyJWTError, KeyError):
        raise socketio.exceptions.ConnectionRefusedError("Authentication error") from None
    await sio.save_session(sid, {"username": username})
    for room_id in rooms_of.get(username, ()):
        await sio.enter_room(sid, room_id)
    return True


@sio.event
async def send_message(sid: str, data: Any) -> dict[str, Any] | None:
    username = (await sio.get_session(sid))["username"]
    if not isinstance(data, dict) or not data.get("roomId") or not data.get("content"):
        await sio.emit("error", {"message": "roomId and content are required"}, to=sid)
        return {"ok": False, "error": "roomId and content are required"}
    room = rooms.get(data["roomId"])
    if room is None or username not in room["participants"]:
        await sio.emit("error", {"message": "You are not a member of this chat room"}, to=sid)
        return {"ok": False, "error": "You are not a member of this chat room"}
    message = {
        "type": "message",
        "roomId": data["roomId"],
        "sender": username,
        "content": data["content"],
        "timestamp": _now(),
    }
    await sio.emit("message", message, room=data["roomId"])
    return {"ok": True}


@sio.event
async def join_room(sid: str, data: Any) -> None:
    username = (await sio.get_session(sid))["username"]
    room = rooms.get(str(data.get("roomId"))) if isinstance(data, dict) else None
    if room is None or username not in room["participants"]:
        await sio.emit("error", {"message": "You are not a member of this chat room"}, to=sid)
        return
    await sio.enter_room(sid, data["roomId"])
    await sio.emit("joined_room", {"roomId": data["roomId"]}, to=sid)


@sio.event
async def leave_room(sid: str, data: Any) -> None:
    if isinstance(data, dict):
        await sio.leave_room(sid, data.get("roomId"))
        await sio.emit("left_room", {"roomId": data.get("roomId")}, to=sid)


def _create_room(creator: str, name: str, others: list[str]) -> dict[str, Any]:
    participants = list(dict.fromkeys([creator, *others]))
    room_id = str(uuid.uuid4())
    rooms[room_id] = {"roomId": room_id, "name": name, "participants": set(participants)}
    for member in participants:
        rooms_of.setdefault(member, set()).add(room_id)
    return {"roomId": room_id, "name": name, "participants": participants}


async def rest(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    status, reply = _route(scope["method"], scope["path"].rstrip("/"), body, dict(scope["headers"]))
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(reply).encode()})


def _route(method: str, path: str, body: bytes, headers: dict[bytes, bytes]) -> tuple[int, Any]:
    data = json.loads(body or b"{}")
    if path == "/health":
        return 200, {"status": "OK"}
    if (method, path) == ("POST", "/api/auth/signup-batch"):
        created = []
        for u in data["users"]:
            if u["username"] not in users:
                users[u["username"]] = u["password"]
                created.append({"username": u["username"], "id": u["username"]})
        return 201, {"created": created, "errors": []}
    if (method, path) == ("POST", "/api/auth/login-batch"):
        results = [
            {"username": u["username"], "token": jwt.encode({"username": u["username"]}, SECRET)}
            for u in data["users"]
            if users.get(u["username"]) == u["password"]
        ]
        return 200, {"results": results, "errors": []}
    if (method, path) == ("POST", "/api/chatrooms-batch"):
        token = headers.get(b"authorization", b"").decode().split(" ")[-1]
        creator = jwt.decode(token, SECRET, algorithms=["HS256"])["username"]
        created = [_create_room(creator, room["name"], room.get("participants", [])) for room in data["rooms"]]
        return 201, {"message": f"{len(created)} rooms created", "created": created, "errors": []}
    return 404, {"error": f"Cannot {method} {path}"}


app = socketio.ASGIApp(sio, other_asgi_app=rest)

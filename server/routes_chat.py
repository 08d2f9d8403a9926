"""``/api/chatrooms*`` and ``/api/messages/delete-all`` (contract §1.3, 6-12, and §8 history paging)."""

from __future__ import annotations

import time
from typing import Any

from quart import Blueprint, Response, request

from protocol import rest
from protocol.rest import RequestError
from server.http_io import admin_gate, authenticated_user, json_response, read_body
from server.rooms import Room
from server.services import Services
from storage.records import HistoryQuery, StoredMessage
from storage.timefmt import iso_utc, parse_date_ms

NOT_FOUND = "Chat room not found"
NOT_A_MEMBER = "You are not a member of this chat room"


def _created(room: Room) -> dict[str, Any]:
    return {"roomId": room.room_id, "name": room.name, "participants": room.participants}


def _listed(room: Room) -> dict[str, Any]:
    return {**_created(room), "createdBy": room.created_by, "createdAt": room.created_at}


def _history_row(m: StoredMessage) -> dict[str, Any]:
    # The original's three fields first, then ours (§8): old clients read only the first three.
    return {
        "sender": m.sender,
        "content": m.content,
        "timestamp": m.timestamp,
        "id": m.id,
        "seq": m.seq,
        "roomId": m.room_id,
    }


def chat_routes(svc: Services) -> Blueprint:
    bp = Blueprint("chat", __name__, url_prefix="/api")

    def room_for_member(room_id: str, user: str, *, not_member_status: int = 403) -> Room:
        room = svc.registry.get(room_id)
        if room is None:
            raise RequestError(404, NOT_FOUND)
        if user not in room.members:
            raise RequestError(not_member_status, NOT_A_MEMBER)
        return room

    @bp.post("/chatrooms")
    async def create_room() -> Response:
        user = authenticated_user(svc.tokens)
        name, participants = rest.room_spec(await read_body(), svc.limits)
        [room] = await svc.registry.create(user, [(name, participants)])
        return json_response(_created(room), 201)

    @bp.post("/chatrooms-batch")
    async def create_rooms() -> Response:
        user = authenticated_user(svc.tokens)
        specs = rest.room_specs(await read_body(), svc.limits)
        rooms = await svc.registry.create(user, specs)
        message = f"Batch room creation completed: {len(rooms)} rooms created, 0 errors"
        return json_response({"message": message, "created": [_created(r) for r in rooms], "errors": []}, 201)

    @bp.get("/chatrooms")
    async def list_rooms() -> Response:
        user = authenticated_user(svc.tokens)
        return json_response([_listed(room) for room in svc.registry.rooms_of(user)])

    @bp.post("/chatrooms/<room_id>/invite")
    async def invite(room_id: str) -> Response:
        user = authenticated_user(svc.tokens)
        names = rest.invitees(await read_body(), svc.limits)  # checked before the room, as the original
        room = room_for_member(room_id, user)
        if len(set(room.participants) | set(names)) > svc.limits.max_participants:
            raise RequestError(400, f"A room can have at most {svc.limits.max_participants} participants")
        participants = await svc.registry.invite(room, names)
        return json_response({"message": "Users invited successfully", "participants": participants})

    @bp.get("/chatrooms/<room_id>/messages")
    async def history(room_id: str) -> Response:
        user = authenticated_user(svc.tokens)
        params = rest.history_params(request.args)
        room_for_member(room_id, user)
        since_ms = None
        if params.since is not None:
            since_ms = parse_date_ms(params.since)
            if since_ms is None:  # JavaScript's Invalid Date: every comparison is false
                return json_response([])
        query = HistoryQuery(room_id, params.limit, params.after_seq, params.before_seq, since_ms)
        return json_response([_history_row(m) for m in await svc.storage.history(query)])

    @bp.post("/chatrooms/<room_id>/leave")
    async def leave(room_id: str) -> Response:
        user = authenticated_user(svc.tokens)
        room = room_for_member(room_id, user, not_member_status=404)  # 404, not 403, as the original
        if await svc.registry.leave(room, user):
            return json_response({"message": "Chat room deleted as no participants remain"})
        return json_response({"message": "Successfully left the chat room"})

    @bp.delete("/messages/delete-all")
    async def delete_all_messages() -> Response:
        admin_gate(svc.admin_routes, svc.admin_token)
        if svc.admin_routes == "open":  # any user, as the original; in token mode the admin token is the auth
            authenticated_user(svc.tokens)
        rest.confirmation(await read_body(), "DELETE_ALL_MESSAGES_CONFIRM")
        deleted, rooms = await svc.storage.delete_all_messages()
        return json_response(
            {
                "message": f"All messages deleted successfully! Deleted: {deleted} messages",
                "deletedCount": deleted,
                "timestamp": iso_utc(time.time()),
                "filesCleared": rooms,
            }
        )

    return bp

"""``/api/chatrooms*``, history paging (§8) and ``/api/messages/delete-all`` against a real server."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from storage.ids import new_id
from storage.records import NewMessage
from storage.timefmt import iso_utc
from tests.conftest import RunningServer, bearer, signup_and_login

NOT_MEMBER = {"error": "You are not a member of this chat room"}
NOT_FOUND = {"error": "Chat room not found"}


async def create_room(http: httpx.AsyncClient, token: str, name: str, participants: list[str] | None = None) -> Any:
    body: dict[str, Any] = {"name": name}
    if participants is not None:
        body["participants"] = participants
    r = await http.post("/api/chatrooms", json=body, headers=bearer(token))
    assert r.status_code == 201, r.text
    return r.json()


async def post_messages(
    running: RunningServer, room_id: str, sender: str, contents: list[str], *, at: float | None = None
) -> None:
    """Store messages through the storage engine (the Socket.IO path that produces them comes later)."""
    now = time.time() if at is None else at
    batch = [
        NewMessage(new_id(int(now * 1000)), room_id, sender, text, iso_utc(now), int(now * 1000)) for text in contents
    ]
    results = await running.server.storage.append_messages(batch)
    assert all(r.message is not None for r in results)


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> str:
    return await signup_and_login(client, "alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> str:
    return await signup_and_login(client, "bob")


# -- authentication: 401 versus 403 -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/chatrooms"),
        ("POST", "/api/chatrooms"),
        ("POST", "/api/chatrooms-batch"),
        ("POST", "/api/chatrooms/x/invite"),
        ("GET", "/api/chatrooms/x/messages"),
        ("POST", "/api/chatrooms/x/leave"),
        ("DELETE", "/api/messages/delete-all"),
    ],
)
async def test_protected_routes_401_then_403(client: httpx.AsyncClient, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "just-a-token"}):
        r = await client.request(method, path, headers=headers)
        assert r.status_code == 401, headers
        assert r.json() == {"error": "Access token required"}
    for token in ("garbage", "a.b.c"):
        r = await client.request(method, path, headers=bearer(token))
        assert r.status_code == 403
        assert r.json() == {"error": "Invalid or expired token"}


async def test_any_scheme_word_works_like_the_original(client: httpx.AsyncClient, alice: str) -> None:
    r = await client.get("/api/chatrooms", headers={"Authorization": f"Token {alice}"})
    assert r.status_code == 200


# -- create, list ------------------------------------------------------------------------------------
async def test_create_room_puts_creator_first_and_dedupes(client: httpx.AsyncClient, alice: str) -> None:
    r = await client.post(
        "/api/chatrooms",
        json={"name": "New Year 🎉 #1", "participants": ["bob", "alice", "carol", "bob"]},
        headers=bearer(alice),
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"roomId", "name", "participants"}
    assert body["name"] == "New Year 🎉 #1"
    assert body["participants"] == ["alice", "bob", "carol"]
    assert len(body["roomId"]) == 36 and body["roomId"][14] == "4", "a uuid v4"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "Room name is required"),
        ({"name": ""}, "Room name is required"),
        ({"name": 5}, "Room name must be a string"),
        ({"name": "r", "participants": None}, "participants must be an array of usernames (non-empty strings)"),
        ({"name": "r", "participants": "bob"}, "participants must be an array of usernames (non-empty strings)"),
        ({"name": "r", "participants": [1]}, "participants must be an array of usernames (non-empty strings)"),
        ({"name": "x" * 257}, "Room name must be at most 256 characters"),
        ({"name": "new\x00year"}, "Room name must not contain the character U+0000"),
        ({"name": "r", "participants": ["b\x00b"]}, "Username must not contain the character U+0000"),
    ],
)
async def test_create_room_validation(client: httpx.AsyncClient, alice: str, body: dict[str, Any], error: str) -> None:
    r = await client.post("/api/chatrooms", json=body, headers=bearer(alice))
    assert r.status_code == 400
    assert r.json() == {"error": error}


async def test_list_rooms_only_mine_in_creation_order(client: httpx.AsyncClient, alice: str, bob: str) -> None:
    first = await create_room(client, alice, "first", ["bob"])
    await create_room(client, bob, "bob only")
    third = await create_room(client, alice, "third")
    r = await client.get("/api/chatrooms", headers=bearer(alice))
    assert r.status_code == 200
    rooms = r.json()
    assert [room["roomId"] for room in rooms] == [first["roomId"], third["roomId"]]
    assert set(rooms[0]) == {"roomId", "name", "participants", "createdBy", "createdAt"}
    assert rooms[0]["createdBy"] == "alice" and rooms[0]["createdAt"].endswith("Z")
    r = await client.get("/api/chatrooms/", headers=bearer(bob))  # trailing slash matches, as in Express
    assert [room["name"] for room in r.json()] == ["first", "bob only"]


async def test_rooms_batch(client: httpx.AsyncClient, alice: str) -> None:
    rooms = [{"name": "r1", "participants": ["bob", "carol"]}, {"name": "r2"}]
    r = await client.post("/api/chatrooms-batch", json={"rooms": rooms}, headers=bearer(alice))
    assert r.status_code == 201
    body = r.json()
    assert body["message"] == "Batch room creation completed: 2 rooms created, 0 errors"
    assert body["errors"] == []
    assert [(c["name"], c["participants"]) for c in body["created"]] == [
        ("r1", ["alice", "bob", "carol"]),
        ("r2", ["alice"]),
    ]
    listed = (await client.get("/api/chatrooms", headers=bearer(alice))).json()
    assert [room["roomId"] for room in listed] == [c["roomId"] for c in body["created"]]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "Rooms array is required"),
        ({"rooms": []}, "Rooms array is required"),
        ({"rooms": [{"name": "ok"}, {"name": ""}]}, "Room name is required"),
    ],
)
async def test_rooms_batch_validation_creates_nothing(
    client: httpx.AsyncClient, alice: str, body: dict[str, Any], error: str
) -> None:
    r = await client.post("/api/chatrooms-batch", json=body, headers=bearer(alice))
    assert r.status_code == 400
    assert r.json() == {"error": error}
    assert (await client.get("/api/chatrooms", headers=bearer(alice))).json() == []


# -- invite ------------------------------------------------------------------------------------------
async def test_invite(client: httpx.AsyncClient, alice: str, bob: str) -> None:
    room = await create_room(client, alice, "r", ["bob"])
    url = f"/api/chatrooms/{room['roomId']}/invite"
    r = await client.post(url, json={"participants": ["carol", "bob", "dave", "carol"]}, headers=bearer(bob))
    assert r.status_code == 200
    assert r.json() == {"message": "Users invited successfully", "participants": ["alice", "bob", "carol", "dave"]}
    carol = await signup_and_login(client, "carol")
    assert [x["roomId"] for x in (await client.get("/api/chatrooms", headers=bearer(carol))).json()] == [room["roomId"]]


async def test_invite_errors(client: httpx.AsyncClient, alice: str, bob: str) -> None:
    room = await create_room(client, alice, "r")
    url = f"/api/chatrooms/{room['roomId']}/invite"
    # The array is checked before the room, as the original does.
    r = await client.post("/api/chatrooms/missing/invite", json={}, headers=bearer(alice))
    assert (r.status_code, r.json()) == (400, {"error": "Participants array is required"})
    r = await client.post("/api/chatrooms/missing/invite", json={"participants": []}, headers=bearer(alice))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    r = await client.post(url, json={"participants": ["x"]}, headers=bearer(bob))
    assert (r.status_code, r.json()) == (403, NOT_MEMBER)
    r = await client.post(url, json={"participants": [7]}, headers=bearer(alice))
    assert (r.status_code, r.json()) == (400, {"error": "Participants must be usernames (non-empty strings)"})


# -- leave -------------------------------------------------------------------------------------------
async def test_leave_then_last_one_out_deletes_room_and_messages(
    client: httpx.AsyncClient, running: RunningServer, alice: str, bob: str
) -> None:
    room = await create_room(client, alice, "r", ["bob"])
    room_id = room["roomId"]
    await post_messages(running, room_id, "alice", ["hello"])
    r = await client.post(f"/api/chatrooms/{room_id}/leave", headers=bearer(alice))  # no body, no content type
    assert (r.status_code, r.json()) == (200, {"message": "Successfully left the chat room"})
    r = await client.post(f"/api/chatrooms/{room_id}/leave", headers=bearer(alice))
    assert (r.status_code, r.json()) == (404, NOT_MEMBER), "a non-member leaving gets 404, not 403"
    r = await client.get(f"/api/chatrooms/{room_id}/messages", headers=bearer(alice))
    assert (r.status_code, r.json()) == (403, NOT_MEMBER)
    r = await client.post(f"/api/chatrooms/{room_id}/leave", headers=bearer(bob))
    assert (r.status_code, r.json()) == (200, {"message": "Chat room deleted as no participants remain"})
    r = await client.get(f"/api/chatrooms/{room_id}/messages", headers=bearer(bob))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    assert await running.server.storage.load_rooms() == []
    r = await client.post(f"/api/chatrooms/{room_id}/leave", headers=bearer(bob))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)


# -- history -----------------------------------------------------------------------------------------
async def test_history_shape_and_errors(
    client: httpx.AsyncClient, running: RunningServer, alice: str, bob: str
) -> None:
    room = await create_room(client, alice, "r")
    url = f"/api/chatrooms/{room['roomId']}/messages"
    assert (await client.get(url, headers=bearer(alice))).json() == []
    await post_messages(running, room["roomId"], "alice", ["hi 🎆"])
    [row] = (await client.get(url, headers=bearer(alice))).json()
    assert list(row)[:3] == ["sender", "content", "timestamp"]
    assert row["sender"] == "alice" and row["content"] == "hi 🎆" and row["seq"] == 1
    assert row["roomId"] == room["roomId"] and isinstance(row["id"], str)
    r = await client.get(url, headers=bearer(bob))
    assert (r.status_code, r.json()) == (403, NOT_MEMBER)
    r = await client.get("/api/chatrooms/nope/messages", headers=bearer(alice))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)


async def test_history_paging(client: httpx.AsyncClient, running: RunningServer, alice: str) -> None:
    room = await create_room(client, alice, "r")
    url = f"/api/chatrooms/{room['roomId']}/messages"
    await post_messages(running, room["roomId"], "alice", [f"m{i}" for i in range(1, 251)])

    async def seqs(**params: Any) -> list[int]:
        r = await client.get(url, params=params, headers=bearer(alice))
        assert r.status_code == 200, r.text
        return [row["seq"] for row in r.json()]

    assert await seqs() == list(range(151, 251)), "the newest 100, ascending (the original gave the oldest)"
    assert await seqs(limit=5) == [246, 247, 248, 249, 250]
    assert await seqs(after_seq=0, limit=3) == [1, 2, 3]
    assert await seqs(after_seq=240) == list(range(241, 251))
    assert await seqs(before_seq=11, limit=4) == [7, 8, 9, 10]
    assert await seqs(after_seq=5, before_seq=9) == [6, 7, 8]
    assert await seqs(limit=1000) == list(range(1, 251))


async def test_history_since(client: httpx.AsyncClient, running: RunningServer, alice: str) -> None:
    room = await create_room(client, alice, "r")
    url = f"/api/chatrooms/{room['roomId']}/messages"
    await post_messages(running, room["roomId"], "alice", ["old"], at=1_700_000_000.0)
    await post_messages(running, room["roomId"], "alice", ["new"], at=1_700_000_100.0)

    async def contents(since: str) -> list[str]:
        r = await client.get(url, params={"since": since}, headers=bearer(alice))
        assert r.status_code == 200
        return [row["content"] for row in r.json()]

    assert await contents(iso_utc(1_700_000_000.0)) == ["new"], "strictly later"
    assert await contents(iso_utc(1_699_999_999.0)) == ["old", "new"]
    assert await contents("not a date") == [], "an unparseable date matches nothing, as in JavaScript"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"limit": "0"}, "limit must be an integer from 1 to 1000"),
        ({"limit": "1001"}, "limit must be an integer from 1 to 1000"),
        ({"limit": "ten"}, "limit must be an integer from 1 to 1000"),
        ({"after_seq": "-1"}, "after_seq must be an integer from 0 to 9007199254740991"),
        ({"before_seq": "1.5"}, "before_seq must be an integer from 0 to 9007199254740991"),
        # Past SQLite's 64-bit integers: these were a 500 (OverflowError when binding the value).
        ({"after_seq": str(2**70)}, "after_seq must be an integer from 0 to 9007199254740991"),
        ({"before_seq": "9" * 400}, "before_seq must be an integer from 0 to 9007199254740991"),
        ({"after_seq": str(2**53)}, "after_seq must be an integer from 0 to 9007199254740991"),
        ({"limit": "0" * 30 + "5"}, "limit must be an integer from 1 to 1000"),
    ],
)
async def test_history_bad_params(client: httpx.AsyncClient, alice: str, params: dict[str, str], error: str) -> None:
    room = await create_room(client, alice, "r")
    r = await client.get(f"/api/chatrooms/{room['roomId']}/messages", params=params, headers=bearer(alice))
    assert (r.status_code, r.json()) == (400, {"error": error})


# -- delete all messages -----------------------------------------------------------------------------
async def test_delete_all_messages(client: httpx.AsyncClient, running: RunningServer, alice: str) -> None:
    r1, r2 = await create_room(client, alice, "r1"), await create_room(client, alice, "r2")
    await post_messages(running, r1["roomId"], "alice", ["a", "b"])
    await post_messages(running, r2["roomId"], "alice", ["c"])
    r = await client.request(
        "DELETE", "/api/messages/delete-all", json={"confirmationCode": "x"}, headers=bearer(alice)
    )
    assert (r.status_code, r.json()) == (400, {"error": "Invalid confirmation code. This is a dangerous operation!"})
    r = await client.request(
        "DELETE",
        "/api/messages/delete-all",
        json={"confirmationCode": "DELETE_ALL_MESSAGES_CONFIRM"},
        headers=bearer(alice),
    )
    assert r.status_code == 200
    body = r.json()
    assert body["message"] == "All messages deleted successfully! Deleted: 3 messages"
    assert (body["deletedCount"], body["filesCleared"]) == (3, 2)
    assert (await client.get(f"/api/chatrooms/{r1['roomId']}/messages", headers=bearer(alice))).json() == []
    # seq never goes backwards: a client paging with after_seq must not miss new messages.
    await post_messages(running, r1["roomId"], "alice", ["after"])
    rows = (await client.get(f"/api/chatrooms/{r1['roomId']}/messages", headers=bearer(alice))).json()
    assert [(row["content"], row["seq"]) for row in rows] == [("after", 3)]

"""End to end with the real python-socketio client against a real server on 127.0.0.1 (contract §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import trio

from tests.conftest import RunningServer, bearer, make_config, start_server
from tests.sio_peer import Peer, make_room, make_users, wait_until


async def connect(peers: list[Peer], url: str, name: str, token: str, **kwargs: Any) -> Peer:
    peer = Peer(name)
    peers.append(peer)
    await peer.connect(url, token, **kwargs)
    return peer


async def history(http: httpx.AsyncClient, token: str, room_id: str, **params: Any) -> list[dict[str, Any]]:
    r = await http.get(f"/api/chatrooms/{room_id}/messages", params=params, headers=bearer(token))
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


async def test_upgrade_to_websocket_with_the_load_tests_extra_connection_header(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    tokens = await make_users(client, ["a"])
    peer = await connect(peers, running.url, "a", tokens["a"], headers={"Connection": "keep-alive"})
    await wait_until(lambda: peer.transport == "websocket")
    stats = running.server.hub.statistics()
    assert (stats["websocket"], stats["polling"]) == (1, 0)


@pytest.mark.parametrize("token", ["", "not-a-jwt"])
async def test_bad_or_missing_token_is_an_authentication_error(
    running: RunningServer, peers: list[Peer], token: str
) -> None:
    peer = Peer("x")
    peers.append(peer)
    with pytest.raises(socketio.exceptions.ConnectionError, match="One or more namespaces failed to connect"):
        await peer.connect(running.url, token)


async def test_send_reaches_every_member_once_in_seq_order(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    names = ["a", "b", "c", "outsider"]
    tokens = await make_users(client, names)
    room = await make_room(client, tokens["a"], ["b", "c"])
    members = [await connect(peers, running.url, n, tokens[n]) for n in ["a", "b", "c"]]
    outsider = await connect(peers, running.url, "outsider", tokens["outsider"])
    per_sender = 40

    async def send_all(peer: Peer) -> None:
        for i in range(per_sender):
            await peer.emit("send_message", {"roomId": room, "content": f"{peer.name}-{i} 🎆"})

    async with trio.open_nursery() as nursery:
        for peer in members:
            nursery.start_soon(send_all, peer)
    total = per_sender * len(members)
    await wait_until(lambda: all(len(p.received("message")) >= total for p in members))
    await trio.sleep(0.2)  # any duplicate would arrive right behind
    for peer in members:
        got = peer.received("message")
        assert [m["seq"] for m in got] == list(range(1, total + 1)), peer.name
        assert len({m["id"] for m in got}) == total
        for sender in ("a", "b", "c"):  # each sender's messages in the order sent (§3.6-9)
            mine = [m["content"] for m in got if m["sender"] == sender]
            assert mine == [f"{sender}-{i} 🎆" for i in range(per_sender)]
        first = got[0]
        assert set(first) == {"type", "roomId", "sender", "content", "timestamp", "id", "seq"}
        assert first["type"] == "message" and first["roomId"] == room
    assert outsider.received("message") == []
    rows = await history(client, tokens["a"], room, limit=1000)
    assert [r["seq"] for r in rows] == list(range(1, total + 1)), "everything broadcast is in history"
    assert [r["id"] for r in rows] == [m["id"] for m in members[0].received("message")]


async def test_errors_for_bad_sends(running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]) -> None:
    tokens = await make_users(client, ["a", "b"])
    room = await make_room(client, tokens["a"], [])
    peer = await connect(peers, running.url, "b", tokens["b"])
    await peer.emit("send_message", {"roomId": room, "content": "not a member"})
    await peer.emit("send_message", {"roomId": room, "content": ""})
    await peer.emit("send_message", {"roomId": room, "message": "light_load_test.py's field name"})
    await peer.emit("send_message", None)
    await peer.emit("join_room", {"roomId": room})
    await peer.emit("join_room", None)
    await wait_until(lambda: len(peer.received("error")) == 6)
    assert [e["message"] for e in peer.received("error")] == [
        "You are not a member of this chat room",
        "roomId and content are required",
        "roomId and content are required",
        "Failed to send message",
        "You are not a member of this chat room",
        "Failed to join room",
    ]
    assert await history(client, tokens["a"], room) == []


async def test_join_and_leave_room(running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]) -> None:
    tokens = await make_users(client, ["a", "b"])
    room = await make_room(client, tokens["a"], ["b"])
    a = await connect(peers, running.url, "a", tokens["a"])
    b = await connect(peers, running.url, "b", tokens["b"])
    await b.emit("join_room", {"roomId": room})
    await wait_until(lambda: b.received("joined_room") == [{"roomId": room}])
    await b.emit("leave_room", {"roomId": room})
    await wait_until(lambda: b.received("left_room") == [{"roomId": room}])
    await a.emit("send_message", {"roomId": room, "content": "after b left the socket room"})
    await wait_until(lambda: len(a.received("message")) == 1)
    await trio.sleep(0.2)
    assert b.received("message") == [], "leave_room stops the broadcasts"
    await b.emit("send_message", {"roomId": room, "content": "b is still a member"})
    await wait_until(lambda: len(a.received("message")) == 2)
    await b.emit("join_room", {"roomId": room})
    await a.emit("send_message", {"roomId": room, "content": "b joined again"})
    await wait_until(lambda: [m["content"] for m in b.received("message")] == ["b joined again"])


async def test_ack_and_idempotent_retry(running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]) -> None:
    tokens = await make_users(client, ["a", "b"])
    room = await make_room(client, tokens["a"], ["b"])
    a = await connect(peers, running.url, "a", tokens["a"])
    b = await connect(peers, running.url, "b", tokens["b"])
    send = {"roomId": room, "content": "exactly once", "clientMsgId": "c-42"}
    first = await a.call("send_message", send)
    assert first["ok"] is True and first["seq"] == 1 and isinstance(first["id"], str)
    assert first["timestamp"].endswith("Z")
    assert await a.call("send_message", send) == first, "a retry gets the original ack"
    assert (await b.call("send_message", {**send, "content": "same id, other sender"}))["seq"] == 2
    refused = await a.call("send_message", {"roomId": "nope", "content": "x"})
    assert refused == {"ok": False, "error": "You are not a member of this chat room"}
    await wait_until(lambda: len(b.received("message")) == 2)
    await trio.sleep(0.2)
    assert [m["content"] for m in b.received("message")] == ["exactly once", "same id, other sender"]
    assert [r["content"] for r in await history(client, tokens["a"], room)] == ["exactly once", "same id, other sender"]


async def test_catch_up_after_reconnect_with_after_seq(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    tokens = await make_users(client, ["a", "b"])
    room = await make_room(client, tokens["a"], ["b"])
    a = await connect(peers, running.url, "a", tokens["a"])
    b = await connect(peers, running.url, "b", tokens["b"])
    await a.call("send_message", {"roomId": room, "content": "before"})
    await wait_until(lambda: len(b.received("message")) == 1)
    last_seen = b.received("message")[-1]["seq"]
    await b.disconnect()
    for i in range(3):
        await a.call("send_message", {"roomId": room, "content": f"missed {i}"})
    missed = await history(client, tokens["b"], room, after_seq=last_seen)
    assert [r["content"] for r in missed] == ["missed 0", "missed 1", "missed 2"]


async def test_polling_only_client(running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]) -> None:
    tokens = await make_users(client, ["a", "b"])
    room = await make_room(client, tokens["a"], ["b"])
    poller = await connect(peers, running.url, "a", tokens["a"], transports=["polling"])
    ws = await connect(peers, running.url, "b", tokens["b"])
    assert poller.transport == "polling"
    for i in range(40):  # more than 16 packets queue up between polls: each poll carries at most 16 (§3.6-6)
        await ws.emit("send_message", {"roomId": room, "content": f"m{i}"})
    ack = await poller.call("send_message", {"roomId": room, "content": "from polling"})
    assert ack["ok"] is True
    await wait_until(lambda: len(poller.received("message")) == 41 and len(ws.received("message")) == 41)
    assert [m["seq"] for m in poller.received("message")] == list(range(1, 42))
    assert poller.sio.connected


async def test_fast_mode_broadcasts_before_commit_and_still_persists(
    nursery: trio.Nursery, db_path: Path, peers: list[Peer]
) -> None:
    server = await start_server(nursery, make_config(db_path, delivery_mode="fast"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, ["a", "b"])
        room = await make_room(http, tokens["a"], ["b"])
        a = await connect(peers, server.url, "a", tokens["a"])
        b = await connect(peers, server.url, "b", tokens["b"])
        acks = [
            await a.call("send_message", {"roomId": room, "content": f"f{i}", "clientMsgId": f"id{i}"})
            for i in range(20)
        ]
        assert [ack["seq"] for ack in acks] == list(range(1, 21))
        assert await a.call("send_message", {"roomId": room, "content": "f0", "clientMsgId": "id0"}) == acks[0]
        await wait_until(lambda: len(b.received("message")) == 20)
        await trio.sleep(0.2)
        assert [m["seq"] for m in b.received("message")] == list(range(1, 21)), "the retry was not broadcast"
        assert [r["seq"] for r in await history(http, tokens["a"], room)] == list(range(1, 21))
        for peer in (a, b):
            await peer.disconnect()
    await server.stop()


async def test_metrics_endpoint_counts_the_traffic(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    tokens = await make_users(client, ["a", "b"])
    room = await make_room(client, tokens["a"], ["b"])
    a = await connect(peers, running.url, "a", tokens["a"])
    await connect(peers, running.url, "b", tokens["b"], transports=["polling"])
    for i in range(5):
        await a.call("send_message", {"roomId": room, "content": f"m{i}"})
    await a.emit("send_message", {"roomId": "nope", "content": "x"})
    await wait_until(lambda: len(a.received("error")) == 1)
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in r.text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["minitalk_messages_accepted_total"] == 5
    assert values["minitalk_messages_rejected_total"] == 1
    assert values["minitalk_messages_broadcast_total"] == 5
    assert values["minitalk_deliveries_total"] == 10
    assert values["minitalk_lag_episodes_total"] == 0
    assert values["minitalk_deliveries_caught_up_total"] == 0
    assert values['minitalk_connections{transport="websocket"}'] == 1
    assert values['minitalk_connections{transport="polling"}'] == 1
    assert values["minitalk_batch_size_messages_count"] >= 1
    assert values["minitalk_commit_seconds_count"] >= 1
    assert "minitalk_event_loop_lag_latest_seconds" in values


async def test_a_batch_of_several_messages_reaches_websocket_and_polling_members_in_order(
    nursery: trio.Nursery, db_path: Path, peers: list[Peer]
) -> None:
    # A long linger puts a burst of sends into few batches: each batch's messages to the room go to a
    # websocket member as one joined outbox entry, and to a polling member packet by packet.
    server = await start_server(nursery, make_config(db_path, batch_linger=0.3))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, ["a", "b", "c"])
        room = await make_room(http, tokens["a"], ["b", "c"])
        a = await connect(peers, server.url, "a", tokens["a"])
        b = await connect(peers, server.url, "b", tokens["b"])
        c = await connect(peers, server.url, "c", tokens["c"], transports=["polling"])
        for i in range(30):
            await a.emit("send_message", {"roomId": room, "content": f"m{i}"})
        await wait_until(lambda: all(len(p.received("message")) >= 30 for p in (a, b, c)))
        await trio.sleep(0.2)
        for peer in (a, b, c):
            got = peer.received("message")
            assert [m["seq"] for m in got] == list(range(1, 31)), peer.name
            assert [m["content"] for m in got] == [f"m{i}" for i in range(30)], peer.name
        r = await http.get("/metrics")
        values = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in r.text.splitlines()
            if line and not line.startswith("#")
        }
        assert values["minitalk_batch_size_messages_count"] < 30, "the sends were batched"
        assert values["minitalk_messages_broadcast_total"] == 30
        assert values["minitalk_deliveries_total"] == 90
        for peer in (a, b, c):
            await peer.disconnect()
    await server.stop()

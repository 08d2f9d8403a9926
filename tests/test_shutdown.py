"""Graceful shutdown loses nothing: SIGTERM while clients are sending, restart, check history."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import bearer
from tests.raw_client import raw_client
from tests.server_process import start_server_process
from tests.sio_peer import make_room, make_users, wait_until

SENDERS = 4


async def test_sigterm_while_sending_keeps_every_acked_and_every_seen_message(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    args = ["--database", f"sqlite:///{tmp_path}/s.db", "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4"]
    server = await start_server_process(nursery, args)
    names = [f"s{i}" for i in range(SENDERS)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, names)
        room = await make_room(http, tokens["s0"], names[1:])
    acked: dict[str, int] = {}
    seen: dict[str, int] = {}
    sent = 0

    async def sender(name: str) -> None:
        nonlocal sent
        try:
            async with raw_client(server.url, tokens[name]) as client:

                async def receive() -> None:
                    while True:
                        event, data = await client.next_event()
                        if event.startswith("ack:") and data["ok"]:
                            acked[data["id"]] = data["seq"]
                        elif event == "message":
                            seen[data["id"]] = data["seq"]

                async with trio.open_nursery() as inner:
                    inner.start_soon(receive)
                    for i in range(100_000):  # bounded; SIGTERM ends it long before
                        await client.emit("send_message", {"roomId": room, "content": f"{name}-{i}"}, ack_id=i)
                        sent += 1
                        await trio.sleep(0.001)
        except* ConnectionClosed:
            pass  # the server closed us on its way down

    async with trio.open_nursery() as senders:
        for name in names:
            senders.start_soon(sender, name)
        await wait_until(lambda: len(acked) >= 300)
        assert await server.terminate() == 0
    assert b"all accepted messages committed" in server.log

    restarted = await start_server_process(nursery, args)
    async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as http:
        rows = []
        after = 0
        while True:
            r = await http.get(
                f"/api/chatrooms/{room}/messages",
                params={"after_seq": after, "limit": 1000},
                headers=bearer(tokens["s0"]),
            )
            page = r.json()
            if not page:
                break
            rows += page
            after = page[-1]["seq"]
    stored = {row["id"]: row["seq"] for row in rows}
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), "gap-free"
    assert acked.items() <= stored.items(), "every acked message is stored, with the seq its ack gave"
    assert seen.items() <= stored.items(), "every broadcast message is stored (durable mode)"
    assert len(stored) <= sent
    assert await restarted.terminate() == 0

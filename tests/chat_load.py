"""A small chat load for fault tests: members of one room send with acks and record everything they see.

Each sender sends ``content = "<name>-<i>"`` with ack id ``i`` and clientMsgId ``<name>-<i>``, paced, until
told to stop or until the server goes away (a kill, a shutdown); every member records the acks it got and
every ``message`` broadcast. Afterwards :func:`read_history` pages the room's history through REST, and the
test compares: what was acked, what was seen, what was stored.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from tests.conftest import bearer
from tests.raw_client import raw_client
from tests.sio_peer import make_room, make_users


class ChatLoad:
    def __init__(self, url: str, tokens: dict[str, str], room: str) -> None:
        self.url = url
        self.tokens = tokens
        self.room = room
        self.acked: dict[str, int] = {}  # message id → the seq its ack gave
        self.failed_acks = 0
        self.errors: list[str] = []
        self.seen: dict[int, set[str]] = {}  # seq → ids broadcast under it (one, unless a seq was reused)
        self.received: dict[str, list[int]] = {}  # member → the seqs of the messages it got, in arrival order
        self.member_urls: dict[str, str] = {}  # member → the server it connects to (default: url)
        self.sent = 0

    @classmethod
    async def create(cls, url: str, senders: int) -> ChatLoad:
        names = [f"s{i}" for i in range(senders)]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            tokens = await make_users(http, names)
            room = await make_room(http, tokens["s0"], names[1:])
        return cls(url, tokens, room)

    def seen_ids(self) -> dict[str, int]:
        return {message_id: seq for seq, ids in self.seen.items() for message_id in ids}

    async def run(self, *, pace: float = 0.001, first: int = 0, count: int = 100_000) -> None:
        """Every member sends until the server closes it, or ``count`` messages each (bounded either way)."""
        async with trio.open_nursery() as nursery:
            for name in self.tokens:
                nursery.start_soon(self.member, name, pace, first, count)

    async def member(self, name: str, pace: float, first: int, count: int) -> None:
        try:
            url = self.member_urls.get(name, self.url)
            async with raw_client(url, self.tokens[name]) as client, trio.open_nursery() as inner:
                inner.start_soon(self._receive, client, name)
                for i in range(first, first + count):
                    payload = {"roomId": self.room, "content": f"{name}-{i}", "clientMsgId": f"{name}-{i}"}
                    await client.emit("send_message", payload, ack_id=i)
                    self.sent += 1
                    await trio.sleep(pace)
                await trio.sleep(1)  # the last acks
                inner.cancel_scope.cancel()
        except* (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError):
            pass  # the server went away (killed, stopped): that is what these tests do to it

    async def _receive(self, client: Any, name: str) -> None:
        while True:
            event, data = await client.next_event()
            if event.startswith("ack:"):
                if data["ok"]:
                    self.acked[data["id"]] = data["seq"]
                else:
                    self.failed_acks += 1
            elif event == "message":
                self.seen.setdefault(data["seq"], set()).add(data["id"])
                self.received.setdefault(name, []).append(data["seq"])
            elif event == "error":
                self.errors.append(data["message"])


async def read_history(url: str, token: str, room: str) -> list[dict[str, Any]]:
    """Every stored message of the room, ascending by seq, through ``after_seq`` paging."""
    rows: list[dict[str, Any]] = []
    after = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while True:
            r = await http.get(
                f"/api/chatrooms/{room}/messages", params={"after_seq": after, "limit": 1000}, headers=bearer(token)
            )
            assert r.status_code == 200, r.text
            page = r.json()
            if not page:
                return rows
            rows += page
            after = page[-1]["seq"]

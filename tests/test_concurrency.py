"""200 concurrent clients against a real server process on 127.0.0.1: no lost or duplicated rows."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from tests.conftest import bearer
from tests.server_process import start_server_process

CLIENTS = 200


Request = Callable[[], Awaitable[httpx.Response]]


async def gather_all(fns: list[Request]) -> list[httpx.Response]:
    """Run every request at once; responses come back in the order of ``fns``."""
    results: list[httpx.Response | None] = [None] * len(fns)

    async def run(i: int) -> None:
        results[i] = await fns[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(fns)):
            nursery.start_soon(run, i)
    return [r for r in results if r is not None]


async def test_200_concurrent_signups_logins_and_rooms(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server_process(
        nursery, ["--database", f"sqlite:///{tmp_path}/c.db", "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4"]
    )
    names = [f"Festive{i}_474255_81f41a6e_7555_Joy" for i in range(CLIENTS)]
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:

        def signup(name: str) -> Request:
            return lambda: http.post("/api/auth/signup", json={"username": name, "password": "pw-" + name})

        # Every name once, plus 50 racing duplicates of one name: exactly one of those may win.
        responses = await gather_all([signup(n) for n in names] + [signup("racer") for _ in range(50)])
        assert [r.status_code for r in responses[:CLIENTS]] == [201] * CLIENTS
        racers = sorted(r.status_code for r in responses[CLIENTS:])
        assert racers == [201] + [409] * 49

        def login(name: str) -> Request:
            return lambda: http.post("/api/auth/login", json={"username": name, "password": "pw-" + name})

        logins = await gather_all([login(n) for n in names])
        assert all(r.status_code == 200 for r in logins)
        tokens = {r.json()["username"]: r.json()["token"] for r in logins}
        assert set(tokens) == set(names)

        rng = random.Random(2026)
        invited = {name: rng.sample([n for n in names if n != name], 3) for name in names}

        def create(name: str) -> Request:
            body = {"name": f"🎆 room of {name}", "participants": invited[name]}
            return lambda: http.post("/api/chatrooms", json=body, headers=bearer(tokens[name]))

        created = await gather_all([create(n) for n in names])
        assert all(r.status_code == 201 for r in created)
        room_ids = [r.json()["roomId"] for r in created]
        assert len(set(room_ids)) == CLIENTS, "no duplicated room ids"

        expected: dict[str, set[str]] = {n: set() for n in names}
        for r in created:
            for member in r.json()["participants"]:
                expected[member].add(r.json()["roomId"])

        def listing(name: str) -> Request:
            return lambda: http.get("/api/chatrooms", headers=bearer(tokens[name]))

        listed = await gather_all([listing(n) for n in names])
        for name, r in zip(names, listed, strict=True):
            assert {room["roomId"] for room in r.json()} == expected[name], name
    assert await server.terminate() == 0

    # The same data after a restart: nothing was only in memory.
    again = await start_server_process(nursery, ["--database", f"sqlite:///{tmp_path}/c.db"])
    async with httpx.AsyncClient(base_url=again.url, timeout=60) as http:
        r = await http.get("/api/chatrooms", headers=bearer(tokens[names[0]]))
        assert {room["roomId"] for room in r.json()} == expected[names[0]]
        r = await http.post("/api/auth/signup", json={"username": "racer", "password": "x"})
        assert r.status_code == 409
    assert await again.terminate() == 0

"""Several server processes on one database: refused on SQLite, cluster members on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import trio

from storage.postgres.store import NOTIFY_LIMIT, _notice, head_notices
from tests.chat_load import ChatLoad, read_history
from tests.conftest import bearer
from tests.raw_client import raw_client
from tests.server_process import ServerProcess, error_lines, run_refused_server, start_server_process
from tests.sio_peer import make_room, make_users, wait_until
from tools.pg_cluster import PgCluster


async def test_a_second_process_on_one_sqlite_file_refuses_to_start(nursery: trio.Nursery, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'one.db'}"
    first = await start_server_process(nursery, ["--database", database])
    code, log = await run_refused_server(["--database", database])
    assert code == 1, log
    errors = error_lines(log)
    assert len(errors) == 1 and "another process is serving the SQLite database" in errors[0], log
    assert "Traceback" not in log
    assert await first.terminate() == 0
    # The first one stopped: a new process takes over the file (a rolling deploy waits, then goes on).
    third = await start_server_process(nursery, ["--database", database])
    assert await third.terminate() == 0


# -- PostgreSQL: every process is a cluster member ---------------------------------------------------------
def pg_args(url: str, *extra: str) -> list[str]:
    # A short head check: the safety net of a missed NOTIFY is part of what these tests exercise.
    return [
        *("--database", url, "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4"),
        *("--cluster-check-interval", "0.5", *extra),
    ]


async def start_members(nursery: trio.Nursery, url: str, count: int) -> list[ServerProcess]:
    return [await start_server_process(nursery, pg_args(url)) for _ in range(count)]


def spread(load: ChatLoad, servers: list[ServerProcess]) -> None:
    """Member i connects to server i mod n: one room's members on every process."""
    for i, name in enumerate(load.tokens):
        load.member_urls[name] = servers[i % len(servers)].url


async def room_known(server: ServerProcess, token: str, room: str) -> None:
    """Wait until the room (created through another process) is listed by this one: its NOTIFY arrived."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        with trio.fail_after(10):
            while True:
                r = await http.get("/api/chatrooms", headers=bearer(token))
                assert r.status_code == 200, r.text
                if room in [room.get("roomId", room.get("_id")) for room in r.json()]:
                    return
                await trio.sleep(0.05)


async def check_everyone_got_everything(load: ChatLoad, servers: list[ServerProcess]) -> list[int]:
    """Every member got every stored message once, in seq order; history is the same through every process."""
    histories = [await read_history(server.url, load.tokens["s0"], load.room) for server in servers]
    assert all(history == histories[0] for history in histories), "REST history differs between processes"
    rows = histories[0]
    seqs = [row["seq"] for row in rows]
    assert seqs == list(range(1, len(rows) + 1)), "gap-free, in seq order"
    stored = {row["id"]: row["seq"] for row in rows}
    assert load.acked.items() <= stored.items(), "every acked message is stored under its acked seq"
    assert load.seen_ids().items() <= stored.items(), "every broadcast message is stored, one id per seq"
    return seqs


async def test_one_room_across_processes_everyone_gets_every_message_once_in_order(
    nursery: trio.Nursery, pg_url: str
) -> None:
    servers = await start_members(nursery, pg_url, 3)
    # The room is created through the first process; the others learn it from the NOTIFY (no restart).
    load = await ChatLoad.create(servers[0].url, senders=6)
    spread(load, servers)
    for server in servers[1:]:
        await room_known(server, load.tokens["s1"], load.room)
    await load.run(pace=0.005, count=100)
    assert len(load.acked) == 600, f"{len(load.acked)} acked, {load.failed_acks} failed, errors {load.errors}"
    seqs = await check_everyone_got_everything(load, servers)
    assert seqs == list(range(1, 601))
    for name, got in load.received.items():
        assert got == sorted(got) and len(got) == len(set(got)), f"{name} got messages out of order or twice"
        # Sent from every process, received wherever the member is: nothing missing.
        assert set(got) == set(range(1, 601)), f"{name} missed {sorted(set(range(1, 601)) - set(got))[:10]}"
    for server in servers:
        assert await server.terminate() == 0, server.log.decode()[-3000:]


async def rooms_of(server: ServerProcess, token: str) -> list[tuple[str, list[str]]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        r = await http.get("/api/chatrooms", headers=bearer(token))
        assert r.status_code == 200, r.text
        return [(room["roomId"], room["participants"]) for room in r.json()]


async def agree(servers: list[ServerProcess], token: str, expected: list[tuple[str, list[str]]]) -> None:
    """Every process answers ``expected`` for this user (soon: a NOTIFY is a round trip away)."""
    with trio.fail_after(10):
        for server in servers:
            while await rooms_of(server, token) != expected:  # noqa: ASYNC110 -- polling another process
                await trio.sleep(0.05)


async def test_room_changes_made_anywhere_reach_every_process(nursery: trio.Nursery, pg_url: str) -> None:
    a, b, c = await start_members(nursery, pg_url, 3)
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        tokens = await make_users(http, ["ann", "bob", "cid"])
        room = await make_room(http, tokens["ann"], ["bob"])
    await agree([a, b, c], tokens["bob"], [(room, ["ann", "bob"])])
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:  # invited through another process
        r = await http.post(
            f"/api/chatrooms/{room}/invite", json={"participants": ["cid"]}, headers=bearer(tokens["bob"])
        )
        assert r.status_code == 200, r.text
    await agree([a, b, c], tokens["cid"], [(room, ["ann", "bob", "cid"])])
    for name, via in (("ann", c), ("bob", a)):  # left through a third and a first
        async with httpx.AsyncClient(base_url=via.url, timeout=30) as http:
            r = await http.post(f"/api/chatrooms/{room}/leave", headers=bearer(tokens[name]))
            assert r.status_code == 200, r.text
    await agree([a, b, c], tokens["cid"], [(room, ["cid"])])
    await agree([a, b, c], tokens["ann"], [])
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:  # the last one leaves: the room is deleted
        r = await http.post(f"/api/chatrooms/{room}/leave", headers=bearer(tokens["cid"]))
        assert r.json() == {"message": "Chat room deleted as no participants remain"}
    await agree([a, b, c], tokens["cid"], [])
    for server in (a, b, c):
        assert await server.terminate() == 0, server.log.decode()[-3000:]


async def test_the_listen_connection_cut_under_traffic_loses_nothing(
    nursery: trio.Nursery, pg_url: str, postgres_cluster: PgCluster
) -> None:
    servers = await start_members(nursery, pg_url, 2)
    load = await ChatLoad.create(servers[0].url, senders=4)
    await room_known(servers[1], load.tokens["s1"], load.room)
    spread(load, servers)
    async with trio.open_nursery() as senders:
        senders.start_soon(lambda: load.run(pace=0.005, count=300))
        await wait_until(lambda: len(load.acked) >= 200)
        dbname = pg_url.rsplit("/", 1)[1]
        cut = postgres_cluster.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = '{dbname}' AND query LIKE 'LISTEN%'",
            dbname=dbname,
        )
        assert cut.strip() == "2", "each process's listener was cut"
    assert len(load.acked) == 1200, f"{len(load.acked)} acked, {load.failed_acks} failed"
    assert await check_everyone_got_everything(load, servers) == list(range(1, 1201))
    for name, got in load.received.items():
        assert got == list(range(1, 1201)), f"{name}: missing {sorted(set(range(1, 1201)) - set(got))[:10]}"
    for server in servers:
        assert b"reconnecting" in server.log or b"cannot listen" in server.log
        assert await server.terminate() == 0, server.log.decode()[-3000:]


async def test_kill_9_of_one_process_under_load_loses_nothing_acked(nursery: trio.Nursery, pg_url: str) -> None:
    servers = await start_members(nursery, pg_url, 2)
    load = await ChatLoad.create(servers[0].url, senders=4)
    await room_known(servers[1], load.tokens["s1"], load.room)
    spread(load, servers)  # s0, s2 on the survivor; s1, s3 on the victim
    async with trio.open_nursery() as senders:
        senders.start_soon(lambda: load.run(pace=0.003, count=400))
        await wait_until(lambda: len(load.acked) >= 300)
        servers[1].proc.kill()
        with trio.fail_after(10):
            await servers[1].proc.wait()
    survivor = servers[0]
    seqs = await check_everyone_got_everything(load, [survivor])
    # The survivor's members got every stored message once, in order: the victim's commits included.
    for name in ("s0", "s2"):
        assert load.received[name] == seqs, f"{name} differs from the log"
    assert await survivor.terminate() == 0


async def test_a_send_retried_on_another_process_gets_the_original_ack(nursery: trio.Nursery, pg_url: str) -> None:
    """A client whose process died sends again through another: the idempotency key finds the stored row."""
    a, b = await start_members(nursery, pg_url, 2)
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        tokens = await make_users(http, ["ann"])
        room = await make_room(http, tokens["ann"], [])
    await room_known(b, tokens["ann"], room)
    acks = []
    for server in (a, b, a):
        async with raw_client(server.url, tokens["ann"]) as client:
            await client.emit("send_message", {"roomId": room, "content": "hi", "clientMsgId": "k1"}, ack_id=1)
            while (event := await client.next_event())[0] != "ack:1":
                pass
            acks.append(event[1])
    assert acks[0]["ok"] and acks[1] == acks[0] == acks[2], acks
    assert [row["seq"] for row in await read_history(b.url, tokens["ann"], room)] == [1]
    for server in (a, b):
        assert await server.terminate() == 0, server.log.decode()[-3000:]


def test_a_commit_over_many_rooms_is_told_in_several_notices_under_the_limit() -> None:
    heads = {f"room-{i:05d}-{'x' * 30}": i for i in range(400)}  # ~20 KB of (room, seq) pairs
    notices = head_notices("me", heads)
    assert len(notices) >= 3 and all(len(n.encode()) <= NOTIFY_LIMIT for n in notices)
    told: dict[str, int] = {}
    for notice in notices:
        decoded = msgspec.json.decode(notice)
        assert decoded["o"] == "me" and "resync" not in decoded
        told |= decoded["r"]
    assert told == heads
    assert head_notices("me", {"r1": 7}) == ['{"o":"me","r":{"r1":7}}']
    assert _notice("me", r=heads) == '{"o":"me","resync":true}'  # one payload past the limit says only that


async def test_invites_through_two_processes_at_once_both_count(nursery: trio.Nursery, pg_url: str) -> None:
    """Each process computes its change from its own memory; storage applies them relative to what is stored,
    so neither undoes the other (a whole list written by each would drop one invitee)."""
    a, b = await start_members(nursery, pg_url, 2)
    guests = [f"g{i}" for i in range(10)]
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        tokens = await make_users(http, ["ann", *guests])
        room = await make_room(http, tokens["ann"], [])
    await room_known(b, tokens["ann"], room)

    async def invite(server: ServerProcess, name: str) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            path = f"/api/chatrooms/{room}/invite"
            r = await http.post(path, json={"participants": [name]}, headers=bearer(tokens["ann"]))
            assert r.status_code == 200, r.text

    async with trio.open_nursery() as inviting:
        for i, name in enumerate(guests):
            inviting.start_soon(invite, (a, b)[i % 2], name)
    expected = {"ann", *guests}
    with trio.fail_after(10):
        for server in (a, b):
            while True:
                listed = await rooms_of(server, tokens["ann"])
                if listed and set(listed[0][1]) == expected:
                    break
                await trio.sleep(0.05)
    for server in (a, b):
        assert await server.terminate() == 0, server.log.decode()[-3000:]

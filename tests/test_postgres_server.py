"""The server on PostgreSQL, as a real process: start-up faults, restarts of the server and of the database.

The database is a real throwaway cluster (``tests/pg_fixtures.py``); clients are real websocket clients
sending with acks (``tests/chat_load.py``). Afterwards every acked message must be in history exactly once,
in seq order, whatever happened in between.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import httpx
import trio

from storage.postgres.engine import PostgresEngine
from tests.chat_load import ChatLoad, read_history
from tests.server_process import ROOT, ServerProcess, error_lines, run_refused_server, start_server_process
from tests.sio_peer import wait_until
from tools.pg_cluster import PgCluster, free_port


def server_args(url: str, *extra: str) -> list[str]:
    return ["--database", url, "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4", *extra]


async def ready_status(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return (await http.get("/ready")).status_code


async def check_stored(server: ServerProcess, load: ChatLoad) -> list[int]:
    """Every acked and every broadcast message stored once, under the seq it was acked or seen with; the
    room's seqs gap-free. Returns the stored seqs."""
    rows = await read_history(server.url, load.tokens["s0"], load.room)
    stored = {row["id"]: row["seq"] for row in rows}
    seqs = [row["seq"] for row in rows]
    assert seqs == list(range(1, len(rows) + 1)), "gap-free, in seq order"
    assert load.acked.items() <= stored.items(), "every acked message is stored, under its acked seq"
    assert load.seen_ids().items() <= stored.items(), "every broadcast message is stored"
    repeated = [key for key, n in Counter(row["content"] for row in rows).items() if n > 1]
    assert repeated == [], "no send is stored twice"
    return seqs


async def test_unreachable_database_is_one_line_with_the_password_hidden() -> None:
    url = f"postgresql://minitalk:s3cret-pw@127.0.0.1:{free_port()}/minitalk"
    code, log = await run_refused_server(["--database", url])
    assert code == 1, log
    errors = error_lines(log)
    assert len(errors) == 1, log
    assert "cannot open PostgreSQL at postgresql://minitalk:***@127.0.0.1:" in errors[0]
    assert "s3cret-pw" not in log and "Traceback" not in log


async def test_chat_on_postgres_survives_a_server_restart(nursery: trio.Nursery, pg_url: str) -> None:
    server = await start_server_process(nursery, server_args(pg_url))
    load = await ChatLoad.create(server.url, senders=3)
    await load.run(pace=0.002, count=100)
    assert len(load.acked) == 300, f"{len(load.acked)} acked, {load.failed_acks} failed, errors {load.errors}"
    assert await server.terminate() == 0, server.log.decode()[-3000:]

    server = await start_server_process(nursery, server_args(pg_url))
    assert await check_stored(server, load) == list(range(1, 301))
    # The counter continues from the stored value: the next message is 301, never a seq given before.
    more = ChatLoad(server.url, load.tokens, load.room)
    await more.run(pace=0.002, first=100, count=10)
    assert sorted(more.acked.values()) == list(range(301, 331))
    load.acked.update(more.acked)
    await check_stored(server, load)
    assert await server.terminate() == 0, server.log.decode()[-3000:]


async def test_database_restart_mid_bombing_loses_and_repeats_nothing(
    nursery: trio.Nursery, pg_url: str, postgres_cluster: PgCluster
) -> None:
    server = await start_server_process(nursery, server_args(pg_url))
    load = await ChatLoad.create(server.url, senders=3)
    async with trio.open_nursery() as senders:
        senders.start_soon(lambda: load.run(pace=0.002, count=3000))
        await wait_until(lambda: len(load.acked) >= 100)
        await trio.to_thread.run_sync(postgres_cluster.stop)
        # Down: commits fail and are retried; senders wait (backpressure), and the server says it is not ready.
        await wait_until(lambda: b"commit of" in server.log and b"failed" in server.log)
        assert await ready_status(server.url) == 503, "not ready while the database is down"
        acked_while_down = len(load.acked)
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(postgres_cluster.start)
        # Back: service resumes by itself, the batch that failed included.
        await wait_until(lambda: len(load.acked) >= acked_while_down + 200, within=30)
        await wait_until(lambda: b"commits work again" in server.log)
        assert await ready_status(server.url) == 200, "ready again once commits work"
        senders.cancel_scope.cancel()
    assert load.failed_acks == 0, "a restart within the outage budget answers no sender with a failure"
    await check_stored(server, load)
    assert await server.terminate() == 0, server.log.decode()[-3000:]


async def test_an_outage_past_the_budget_answers_senders(
    nursery: trio.Nursery, pg_url: str, postgres_cluster: PgCluster
) -> None:
    server = await start_server_process(nursery, server_args(pg_url, "--storage-outage-budget", "1"))
    load = await ChatLoad.create(server.url, senders=2)
    async with trio.open_nursery() as senders:
        senders.start_soon(lambda: load.run(pace=0.005, count=3000))
        await wait_until(lambda: len(load.acked) >= 50)
        await trio.to_thread.run_sync(postgres_cluster.stop)
        try:
            await wait_until(lambda: load.failed_acks > 0, within=30)
            assert b"could not be stored" in server.log
        finally:
            await trio.to_thread.run_sync(postgres_cluster.start)
        acked_after = len(load.acked)
        await wait_until(lambda: len(load.acked) >= acked_after + 50, within=30)
        senders.cancel_scope.cancel()
    await check_stored(server, load)
    assert await server.terminate() == 0, server.log.decode()[-3000:]


async def test_two_servers_starting_at_once_do_not_race_on_migrations(nursery: trio.Nursery, pg_url: str) -> None:
    """An empty database, two servers at the same moment: both start (the second waits for the migration
    lock, then finds the schema current) and both serve."""
    servers: list[ServerProcess] = []

    async def start() -> None:
        servers.append(await start_server_process(nursery, server_args(pg_url)))

    async with trio.open_nursery() as both:
        both.start_soon(start)
        both.start_soon(start)
    for server in servers:
        assert await ready_status(server.url) == 200
    async with httpx.AsyncClient(base_url=servers[0].url, timeout=30) as http:
        r = await http.post("/api/auth/signup", json={"username": "alice", "password": "pw"})
        assert r.status_code == 201, r.text
    for server in servers:
        assert await server.terminate() == 0, server.log.decode()[-3000:]


async def test_fast_mode_on_postgres_is_refused_in_one_line() -> None:
    code, log = await run_refused_server(
        ["--delivery-mode", "fast"], env={"DATABASE_URL": "postgresql://minitalk@127.0.0.1:1/minitalk"}
    )
    assert code == 2, log
    assert "delivery_mode = fast needs one process to own each room's seq" in log and "Traceback" not in log


def test_schema_version_is_recorded(pg_url: str, postgres_cluster: PgCluster) -> None:
    """After a start the schema table says version 1 (the same statement a newer server reads)."""
    subprocess.run(
        [sys.executable, "-c", _OPEN_AND_CLOSE, pg_url], cwd=ROOT, check=True, capture_output=True, timeout=60
    )
    dbname = pg_url.rsplit("/", 1)[1]
    assert postgres_cluster.psql("SELECT version FROM schema_version", dbname=dbname).strip() == "1"


_OPEN_AND_CLOSE = """
import sys, trio
from storage import open_storage

async def main() -> None:
    engine = open_storage(sys.argv[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


async def test_an_unretrieved_asyncio_error_is_logged_not_raised(pg_url: str) -> None:
    """trio-asyncio's default raises such errors (a future a dropped connection left behind) into its loop's
    nursery: that ended the engine, and the process, at a shutdown. The engine logs them instead."""
    engine = PostgresEngine(pg_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        engine._loop.call_exception_handler(
            {"message": "Future exception was never retrieved", "exception": ConnectionError("gone")}
        )
        await trio.sleep(0.1)
        assert await engine.log_head() == 0, "the engine still answers"
        nursery.cancel_scope.cancel()

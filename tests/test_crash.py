"""Crashes and storage faults lose nothing that was acked, and never give one seq to two messages.

Each test runs ``python -m server`` as a real process with a real SQLite file, drives it with members of
one room sending with acks (:mod:`tests.chat_load`), breaks it (kill -9, a full disk, a locked database),
restarts it on the same file, and compares what was acked and seen with what history says is stored.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.chat_load import ChatLoad, read_history
from tests.server_process import ServerProcess, start_server_process
from tests.sio_peer import wait_until

INGEST_QUEUE = 256  # small, so fast mode's bound on what a crash can lose is tight and checkable


def server_args(db: Path, *extra: str) -> list[str]:
    return ["--database", f"sqlite:///{db}", "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4", *extra]


async def kill9(server: ServerProcess) -> None:
    server.proc.kill()
    with trio.fail_after(10):
        await server.proc.wait()


async def load_until_killed(server: ServerProcess, load: ChatLoad, *, first: int, acked_at_least: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: load.run(first=first))
        await wait_until(lambda: len(load.acked) >= acked_at_least, within=30)
        await kill9(server)


async def test_kill9_in_durable_mode_keeps_every_acked_message_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    args = server_args(tmp_path / "d.db")
    server = await start_server_process(nursery, args)
    load = await ChatLoad.create(server.url, senders=4)
    for cycle in range(2):
        load.url = server.url
        await load_until_killed(server, load, first=cycle * 100_000, acked_at_least=300 * (cycle + 1))
        server = await start_server_process(nursery, args)
    rows = await read_history(server.url, load.tokens["s0"], load.room)
    stored = {row["id"]: row["seq"] for row in rows}
    assert len(stored) == len(rows), "no message stored twice"
    assert len({row["content"] for row in rows}) == len(rows), "no send stored twice"
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), "seqs gap-free"
    assert load.acked.items() <= stored.items(), "every acked message is stored, with the seq its ack gave"
    assert load.seen_ids().items() <= stored.items(), "durable mode: every broadcast message is stored"
    assert await server.terminate() == 0


async def test_kill9_in_fast_mode_never_reuses_a_seq(nursery: trio.Nursery, tmp_path: Path) -> None:
    args = server_args(tmp_path / "f.db", "--delivery-mode", "fast", "--ingest-queue", str(INGEST_QUEUE))
    server = await start_server_process(nursery, args)
    load = await ChatLoad.create(server.url, senders=4)
    await load_until_killed(server, load, first=0, acked_at_least=300)
    before_crash = max(load.seen)

    server = await start_server_process(nursery, args)
    assert f"every room's seq skips {INGEST_QUEUE}".encode() in server.log
    load.url = server.url
    await load.run(first=100_000, count=20, pace=0.005)  # after the restart: 80 more messages
    rows = await read_history(server.url, load.tokens["s0"], load.room)

    assert all(len(ids) == 1 for ids in load.seen.values()), "no seq was broadcast for two messages"
    stored = {row["seq"]: row["id"] for row in rows}
    assert all(stored[seq] in ids for seq, ids in load.seen.items() if seq in stored), "a stored seq is the one seen"
    assert load.acked.items() <= {row["id"]: row["seq"] for row in rows}.items(), "acked means stored"
    assert len({row["content"] for row in rows}) == len(rows), "no send stored twice"
    lost = [seq for seq in load.seen if seq not in stored]
    assert len(lost) <= INGEST_QUEUE, "a crash loses at most the ingest queue"
    after_restart = [seq for seq in load.seen if seq > before_crash]
    assert len(after_restart) == 80
    assert min(after_restart) > before_crash, "new seqs start past every seq anyone may have seen"
    stored_before_crash = max(seq for seq in stored if seq <= before_crash)
    assert min(after_restart) == stored_before_crash + INGEST_QUEUE + 1, "the skip is the documented one"
    assert await server.terminate() == 0


@pytest.mark.parametrize("mode", ["durable", "fast"])
async def test_sigterm_under_load_acks_everything_it_commits(nursery: trio.Nursery, tmp_path: Path, mode: str) -> None:
    args = server_args(tmp_path / "s.db", "--delivery-mode", mode)
    server = await start_server_process(nursery, args)
    load = await ChatLoad.create(server.url, senders=4)
    async with trio.open_nursery() as senders:
        senders.start_soon(load.run)
        await wait_until(lambda: len(load.acked) >= 300)
        assert await server.terminate() == 0
    assert b"all accepted messages committed" in server.log

    restarted = await start_server_process(nursery, args)
    assert b"skips" not in restarted.log, "a graceful stop leaves no seq unstored"
    rows = await read_history(restarted.url, load.tokens["s0"], load.room)
    stored = {row["id"]: row["seq"] for row in rows}
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), "gap-free"
    assert load.seen_ids().items() <= stored.items(), "every broadcast message is stored"
    assert stored == load.acked, "every committed message was acked before its session closed"
    assert await restarted.terminate() == 0


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): the disk-full test needs a disk that fills")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; deleting it frees the disk again."""
    filler = disk / "filler"
    # suppress outside the file: closing it flushes, and that fails on the full disk too.
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def ready_status(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return (await http.get("/ready")).status_code


@pytest.mark.parametrize("mode", ["durable", "fast"])
async def test_disk_full_loses_nothing_acked_and_service_resumes(
    nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        args = server_args(disk / "full.db", "--delivery-mode", mode, "--ingest-queue", str(INGEST_QUEUE))
        # Durable: an outage longer than the budget answers the senders instead of keeping them waiting.
        args += ["--storage-outage-budget", "2"]
        server = await start_server_process(nursery, args)
        load = await ChatLoad.create(server.url, senders=2)
        async with trio.open_nursery() as senders:
            senders.start_soon(lambda: load.run(pace=0.002, count=3000))
            await wait_until(lambda: len(load.acked) >= 50)
            filler = fill(disk)
            # Durable: past the budget, the senders are answered; fast: retried on and on until stored.
            gave_up = b"could not be stored" if mode == "durable" else b"retrying until it is stored"
            await wait_until(lambda: gave_up in server.log, within=30)
            assert await ready_status(server.url) == 503, "not ready while commits fail"
            acked_while_full = len(load.acked)
            filler.unlink()
            await wait_until(lambda: len(load.acked) >= acked_while_full + 100, within=30)
            assert await ready_status(server.url) == 200, "ready again once commits work"
            senders.cancel_scope.cancel()
        assert await server.terminate() == 0
        server = await start_server_process(nursery, args)
        rows = await read_history(server.url, load.tokens["s0"], load.room)
        stored = {row["id"]: row["seq"] for row in rows}
        assert load.acked.items() <= stored.items(), "every acked message is stored"
        assert load.seen_ids().items() <= stored.items(), "every broadcast message is stored"
        if mode == "durable":
            assert load.failed_acks > 0, "while the disk was full, sends were refused with a failed ack"
            assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), "gap-free"
        else:
            assert load.failed_acks == 0, "fast mode retries what members saw until it is stored"
        assert await server.terminate() == 0


def hold_write_lock(db: Path, seconds: float) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_locked_database_loses_nothing_and_service_resumes(nursery: trio.Nursery, tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    server = await start_server_process(nursery, server_args(db))
    load = await ChatLoad.create(server.url, senders=2)
    async with trio.open_nursery() as senders:
        senders.start_soon(lambda: load.run(pace=0.002, count=3000))
        await wait_until(lambda: len(load.acked) >= 50)
        # Longer than SQLite's busy timeout (5 s): the first commit attempt fails, a retry gets through.
        await trio.to_thread.run_sync(hold_write_lock, db, 6.5)
        acked_at_release = len(load.acked)
        await wait_until(lambda: len(load.acked) >= acked_at_release + 100, within=30)
        senders.cancel_scope.cancel()
    assert b"database is locked" in server.log
    rows = await read_history(server.url, load.tokens["s0"], load.room)
    stored = {row["id"]: row["seq"] for row in rows}
    assert load.acked.items() <= stored.items()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), "gap-free"
    assert await server.terminate() == 0

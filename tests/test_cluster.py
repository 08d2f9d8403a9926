"""Several server processes on one database: refused on SQLite, cluster members on PostgreSQL."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from tests.server_process import ROOT, start_server_process


async def test_a_second_process_on_one_sqlite_file_refuses_to_start(nursery: trio.Nursery, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'one.db'}"
    first = await start_server_process(nursery, ["--database", database])
    with trio.fail_after(30):
        second = await trio.run_process(
            [sys.executable, "-m", "server", "--port", "0", "--database", database],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    log = second.stderr.decode()
    assert second.returncode == 1, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "another process is serving the SQLite database" in errors[0], log
    assert "Traceback" not in log
    assert await first.terminate() == 0
    # The first one stopped: a new process takes over the file (a rolling deploy waits, then goes on).
    third = await start_server_process(nursery, ["--database", database])
    assert await third.terminate() == 0

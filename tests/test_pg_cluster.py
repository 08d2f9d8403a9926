"""tools/pg_cluster.py against real PostgreSQL processes: start, reuse, restart, crash, and the serve CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_fixtures import postgres_bin_dir, temp_data_dir, throwaway_cluster
from tools.pg_cluster import PgCluster, PgClusterError, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own, for the tests that stop, kill or restart it."""
    with throwaway_cluster(postgres_bin_dir()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def serve_dir() -> Iterator[Path]:
    postgres_bin_dir()  # skip (or fail under CI) before running the CLI without PostgreSQL
    with temp_data_dir() as path:
        yield path


def postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])


def test_select_one_through_psql(postgres_cluster: PgCluster) -> None:
    assert postgres_cluster.psql("select 1") == "1"
    assert postgres_cluster.url("x") == f"postgresql://minitalk@127.0.0.1:{postgres_cluster.port}/x"
    settings = postgres_cluster.psql("show listen_addresses; show fsync; show max_connections; show server_encoding")
    assert settings.split("\n") == ["127.0.0.1", "on", "200", "UTF8"]


def test_two_databases_are_separate(postgres_cluster: PgCluster) -> None:
    postgres_cluster.create_database("pgc_one")
    postgres_cluster.create_database("pgc_two")
    try:
        postgres_cluster.psql("create table t (v int); insert into t values (1)", dbname="pgc_one")
        assert postgres_cluster.psql("select to_regclass('t') is null", dbname="pgc_two") == "t"
        postgres_cluster.ensure_database("pgc_one")  # exists already: nothing happens, no error
        with pytest.raises(PgClusterError, match="already exists"):
            postgres_cluster.create_database("pgc_two")
    finally:
        postgres_cluster.drop_database("pgc_one")
        postgres_cluster.drop_database("pgc_two")
    assert postgres_cluster.psql("select count(*) from pg_database where datname like 'pgc_%'") == "0"


def test_pg_url_is_a_fresh_database(pg_url: str, postgres_cluster: PgCluster) -> None:
    name = pg_url.rsplit("/", 1)[1]
    assert name.startswith("test_")
    assert postgres_cluster.psql("select current_database()", dbname=name) == name
    assert postgres_cluster.psql("select count(*) from pg_tables where schemaname = 'public'", dbname=name) == "0"


def test_restart_keeps_data_and_port(own_cluster: PgCluster) -> None:
    own_cluster.ensure_database("minitalk")
    own_cluster.psql("create table kept (v text); insert into kept values ('before restart')", dbname="minitalk")
    port, pid = own_cluster.port, postmaster_pid(own_cluster)
    own_cluster.restart()
    assert (own_cluster.port, own_cluster.is_running()) == (port, True)
    assert postmaster_pid(own_cluster) != pid
    assert own_cluster.psql("select v from kept", dbname="minitalk") == "before restart"


def test_kill_then_start_recovers(own_cluster: PgCluster) -> None:
    own_cluster.ensure_database("minitalk")
    own_cluster.psql("create table crashed (v int); insert into crashed values (42)", dbname="minitalk")
    own_cluster.kill()
    assert not own_cluster.is_running()
    own_cluster.start()
    assert own_cluster.psql("select v from crashed", dbname="minitalk") == "42"
    # The kill was a crash, not a clean stop: the start had to replay the WAL.
    assert "automatic recovery in progress" in own_cluster.log_path.read_text()


def test_second_start_reuses_the_running_cluster(own_cluster: PgCluster) -> None:
    pid = postmaster_pid(own_cluster)
    with PgCluster(own_cluster.data_dir, bin_dir=own_cluster.bin_dir) as again:
        assert again.port == own_cluster.port
        assert postmaster_pid(again) == pid
        with pytest.raises(PgClusterError, match="already running on port"):
            PgCluster(own_cluster.data_dir, own_cluster.port + 1, bin_dir=own_cluster.bin_dir).start()
    assert not own_cluster.is_running()  # leaving the `with` stopped it
    own_cluster.start()
    assert own_cluster.psql("select 1") == "1"


def serve(data: Path, port: int, script: str) -> list[str]:
    """The serve CLI running ``script`` in Python, with ``PSQL`` set to the cluster's psql."""
    cmd = [sys.executable, "-c", f"PSQL = {str(postgres_bin_dir() / 'psql')!r}\n{script}"]
    return [sys.executable, "-m", "tools.pg_cluster", "serve", "--data", str(data), "--port", str(port), "--", *cmd]


def test_serve_runs_a_command_with_database_url_then_stops(serve_dir: Path) -> None:
    port = free_port()
    script = (
        "import os, subprocess, sys\n"
        "url = os.environ['DATABASE_URL']\n"
        "print(url, flush=True)\n"
        "subprocess.run([PSQL, '-X', '-At', '-c', 'select current_database()', url], check=True)\n"
        "sys.exit(7)\n"
    )
    result = subprocess.run(
        serve(serve_dir, port, script), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 7, result.stderr  # the command's own exit status
    assert result.stdout.split() == [f"postgresql://minitalk@127.0.0.1:{port}/minitalk", "minitalk"]
    assert f"PostgreSQL in {serve_dir}" in result.stderr
    assert not PgCluster(serve_dir, bin_dir=postgres_bin_dir()).is_running()


def test_serve_forwards_sigterm_and_stops_the_cluster(serve_dir: Path) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(serve(serve_dir, free_port(), script), cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        assert PgCluster(serve_dir, bin_dir=postgres_bin_dir()).is_running()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 5
    assert not PgCluster(serve_dir, bin_dir=postgres_bin_dir()).is_running()

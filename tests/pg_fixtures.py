"""PostgreSQL fixtures: one real cluster for the session (``postgres_cluster``), a fresh database per test (``pg_url``).

The cluster comes from ``tools/pg_cluster.py``: the machine's PostgreSQL binaries (installed with apt-get when
absent and we are root), 127.0.0.1 and a free port only. Without PostgreSQL the tests that use these fixtures
are skipped, or fail when ``CI`` is set (a CI run that silently tests nothing would look green).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from tools.pg_cluster import PgCluster, PgClusterError, PostgresUnavailable, ensure_installed

T = TypeVar("T")


@contextmanager
def temp_data_dir() -> Iterator[Path]:
    """A fresh empty directory for a cluster, removed afterwards.

    Not pytest's ``tmp_path_factory``: its directories are mode 0700, and as root the server runs as the
    ``postgres`` user, which could not enter them. A directory made directly in /tmp can be handed over.
    """
    path = Path(tempfile.mkdtemp(prefix="minitalk-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def throwaway_cluster(bin_dir: Path) -> Iterator[PgCluster]:
    """A started cluster on a free port in a temporary directory; stopped and removed afterwards."""
    with temp_data_dir() as data_dir:
        cluster = PgCluster(data_dir, bin_dir=bin_dir)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def installed_or_skip(install: Callable[[], T], missing: type[Exception]) -> T:
    """What ``install`` finds (installing it when it may), or skip the test with the one sentence that says what
    to install; under CI fail instead (a CI run that silently tests nothing would look green)."""
    try:
        return install()
    except missing as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries (see ``installed_or_skip``)."""
    return installed_or_skip(ensure_installed, PostgresUnavailable)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PgCluster]:
    """One cluster for the whole session. A test that stops or kills it must start it again."""
    with throwaway_cluster(postgres_bin_dir()) as cluster:
        yield cluster


@pytest.fixture
def pg_url(postgres_cluster: PgCluster) -> Iterator[str]:
    """The URL of a database of this test's own, created empty and dropped afterwards."""
    postgres_cluster.start()  # a no-op when it runs; brings it back if a fault test failed with it stopped
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres_cluster.create_database(name)
    yield postgres_cluster.url(name)
    # Best effort: the cluster may be down after a failed fault test, and it is thrown away at the end anyway.
    # drop_database uses FORCE: connections a failed test left open must not keep the database.
    with contextlib.suppress(PgClusterError):
        postgres_cluster.drop_database(name)

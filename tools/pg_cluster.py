"""A local PostgreSQL cluster for the tests and ``make run-postgres``, made from the distribution's binaries.

    .venv/bin/python -m tools.pg_cluster serve --data ./data/pg -- .venv/bin/python -m server
    .venv/bin/python -m tools.pg_cluster start --data ./data/pg     # leave it running; `url` prints its URL
    .venv/bin/python -m tools.pg_cluster stop --data ./data/pg

The data directory is the cluster's own directory (PGDATA): ``initdb`` on first use (superuser ``minitalk``,
trust authentication, UTF8, C locale), settings in ``minitalk.conf`` beside ``postgresql.conf``, the server log
in ``postgresql.log`` and the Unix socket in the directory itself. It listens on 127.0.0.1 only: trust
authentication is acceptable only because nothing but this machine can connect. fsync stays on: durability is
what the fault tests check. As root the server runs as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal
from urllib.parse import quote

from tools.debian import find_or_install

SUPERUSER = "minitalk"
OS_USER = "postgres"  # who runs the server when we are root: Debian's package creates this user
DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
MAX_CONNECTIONS = 200  # a server's pool plus the tests' own connections, with room to spare
READY_TIMEOUT = 30.0
TOOL_TIMEOUT = 120.0  # any one initdb / pg_ctl / psql run; a hung tool becomes an error, not a stalled suite
# A Unix socket path must fit sockaddr_un.sun_path (108 bytes with its NUL on Linux).
MAX_SOCKET_PATH = 107
SETTINGS_FILE = "minitalk.conf"
LOG_FILE = "postgresql.log"

StopMode = Literal["smart", "fast", "immediate"]


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not on this machine and could not be installed."""


class PgClusterError(RuntimeError):
    """A cluster operation failed; the message carries the tool's output and the server log's tail."""


def find_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl, postgres, psql and pg_isready: 15 preferred, else the newest."""
    if _has_server(DEFAULT_BIN_DIR):
        return DEFAULT_BIN_DIR
    versions = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_server(d)]
    if versions:
        return max(versions, key=lambda d: _version_key(d.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT
        )
        bindir = Path(result.stdout.strip())
        if result.returncode == 0 and _has_server(bindir):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin or "
        "pg_config --bindir: install PostgreSQL 15 (Debian/Ubuntu: `apt-get install postgresql`, elsewhere your "
        "distribution's PostgreSQL server package) and try again."
    )


def ensure_installed() -> Path:
    """``find_bin_dir()``, installing Debian's ``postgresql`` package first when it is absent and we are root."""
    return find_or_install(find_bin_dir, PostgresUnavailable, "postgresql")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # The server sets SO_REUSEADDR too, so connections of its previous run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def recorded_port(data_dir: Path) -> int | None:
    """The port of the cluster in ``data_dir``: the running server's, else the one it was last started on."""
    running = _running_port(data_dir)
    if running is not None:
        return running
    with contextlib.suppress(OSError):
        match = re.search(r"^port = (\d+)$", (data_dir / SETTINGS_FILE).read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


class PgCluster:
    """One PostgreSQL cluster in ``data_dir`` on 127.0.0.1:``port`` (free port, or the last one used, when None)."""

    def __init__(self, data_dir: Path | str, port: int | None = None, *, bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()  # the tools run with cwd "/": a relative path would break
        self.bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
        self.log_path = self.data_dir / LOG_FILE
        self._port = port
        self._port_given = port is not None
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam(OS_USER)
            except KeyError:
                raise PgClusterError(
                    f"running as root, PostgreSQL must run as the unprivileged user {OS_USER!r}, which does not "
                    "exist: install Debian's postgresql package (it creates the user) or run as another user"
                ) from None

    @property
    def port(self) -> int:
        if self._port is None:
            raise PgClusterError(f"the cluster in {self.data_dir} has no port yet: start() it first")
        return self._port

    def url(self, dbname: str = "minitalk") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def is_running(self) -> bool:
        return _running_port(self.data_dir) is not None

    def start(self) -> None:
        """initdb when the directory holds no cluster, start it (or reuse the running one), wait until ready."""
        running = _running_port(self.data_dir)
        if running is not None:
            if self._port_given and running != self._port:
                raise PgClusterError(
                    f"the cluster in {self.data_dir} is already running on port {running}, not {self._port}"
                )
            self._port = running
            self._wait_ready()
            return
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        # A port the kernel handed out may be taken before the server binds it: try another, a few times.
        attempts = 1 if self._port is not None else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else self._pick_port()
            self._write_settings(port)
            args = ["pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w"]
            result = self._tool([*args, "-t", str(int(READY_TIMEOUT))], as_owner=True)
            if result.returncode == 0:
                self._port = port
                break
            log = self._log_tail()
            if attempt + 1 < attempts and "Address already in use" in log:
                continue
            raise PgClusterError(f"pg_ctl start failed for {self.data_dir}:\n{_output(result)}\n{log}")
        self._wait_ready()

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server if it runs: ``fast`` disconnects clients and checkpoints, ``immediate`` is a crash."""
        if not self.is_running():
            return
        args = ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60"]
        result = self._tool(args, as_owner=True)
        if result.returncode != 0:
            raise PgClusterError(f"pg_ctl stop failed for {self.data_dir}:\n{_output(result)}\n{self._log_tail()}")

    def kill(self) -> None:
        """Stop without a shutdown checkpoint, as a crash does: the next start runs crash recovery."""
        self.stop("immediate")

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop, then start again on the same port (fault tests restart the database under traffic)."""
        self.stop(mode)
        self.start()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` (one or more statements, psql meta-commands allowed) and return its rows, ``|``-separated."""
        args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(dbname), "-f", "-"]
        result = self._tool(args, as_owner=False, stdin=sql)
        if result.returncode != 0:
            raise PgClusterError(f"psql on {self.url(dbname)} failed:\n{_output(result)}")
        return result.stdout.rstrip("\n")

    def create_database(self, name: str) -> None:
        self.psql(f"CREATE DATABASE {quote_ident(name)}")

    def ensure_database(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        self.psql(
            f"SELECT 'CREATE DATABASE ' || quote_ident({quote_literal(name)}) "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {quote_literal(name)})\n\\gexec"
        )

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever is still connected to it."""
        self.psql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _pick_port(self) -> int:
        previous = recorded_port(self.data_dir)
        return previous if previous is not None and port_is_free(previous) else free_port()

    def _prepare_dir(self) -> None:
        fresh = not self.data_dir.exists()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PgClusterError(f"cannot create the data directory {self.data_dir}: {exc}") from exc
        if self._owner is None:
            return
        if fresh or not any(self.data_dir.iterdir()):
            os.chown(self.data_dir, self._owner.pw_uid, self._owner.pw_gid)
        # As root it is easy to pick a directory under one that only root may enter (/root, pytest's tmp dirs):
        # initdb would then fail with a bare "permission denied". Say which directory is in the way.
        if self._tool(["test", "-w", str(self.data_dir)], as_owner=True, in_bin_dir=False).returncode != 0:
            blocker = _closed_ancestor(self.data_dir, self._owner)
            where = f"{blocker} is closed to it" if blocker else f"{self.data_dir} is not writable by it"
            raise PgClusterError(
                f"the {OS_USER} user (uid {self._owner.pw_uid}) that runs PostgreSQL for root cannot use "
                f"{self.data_dir}: {where}; choose a data directory it can reach"
            )

    def _initdb(self) -> None:
        args = ["initdb", "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-locale"]
        result = self._tool([*args, "--no-instructions"], as_owner=True)
        if result.returncode != 0:
            raise PgClusterError(f"initdb failed for {self.data_dir}:\n{_output(result)}")

    def _write_settings(self, port: int) -> None:
        socket_dir = str(self.data_dir)
        # Too long a socket path is fatal at start; we connect over TCP only, so go without the socket then.
        if len(f"{socket_dir}/.s.PGSQL.{port}".encode()) > MAX_SOCKET_PATH:
            socket_dir = ""
        # Our settings live in their own file, rewritten at each start; postgresql.conf only includes it (the
        # include is added to a cluster that this tool did not create, too: without it our port would not apply).
        conf = self.data_dir / "postgresql.conf"
        include = f"include = '{SETTINGS_FILE}'"
        if include not in conf.read_text():
            with conf.open("a") as f:
                f.write(f"\n# tools/pg_cluster.py: listen address, port, socket directory\n{include}\n")
        settings = self.data_dir / SETTINGS_FILE
        settings.write_text(
            "# Written by tools/pg_cluster.py at every start: edits here are overwritten.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = {quote_literal(socket_dir)}\n"
            f"max_connections = {MAX_CONNECTIONS}\n"
        )
        if self._owner is not None:
            os.chown(settings, self._owner.pw_uid, self._owner.pw_gid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        args = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"]
        while True:
            if self._tool([*args, "-t", "1"], as_owner=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PgClusterError(
                    f"PostgreSQL in {self.data_dir} was not ready on 127.0.0.1:{self.port} within "
                    f"{READY_TIMEOUT:.0f} s\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"(no server log: {exc})"
        return f"last lines of {self.log_path}:\n" + "\n".join(tail)

    def _tool(
        self, args: list[str], *, as_owner: bool, stdin: str | None = None, in_bin_dir: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool, as the ``postgres`` user when ``as_owner`` and we are root."""
        argv = [str(self.bin_dir / args[0]), *args[1:]] if in_bin_dir else args
        # PG* variables (PGHOST, PGSSLMODE, PGOPTIONS, ...) of the caller's shell must not redirect our tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        owner = self._owner if as_owner else None
        if owner is not None:
            env.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            # The postgres user may not enter our cwd (/root, say), and the tools complain when they cannot.
            cwd="/",
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=os.getgrouplist(owner.pw_name, owner.pw_gid) if owner else None,
            check=False,
            timeout=TOOL_TIMEOUT,
        )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"  # standard_conforming_strings is on: backslashes are plain


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres", "psql", "pg_isready"))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _running_port(data_dir: Path) -> int | None:
    """The port in ``postmaster.pid`` when its process is alive (the file outlives a kill -9)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, and someone else's: a non-root caller looking at the postgres user's server
    # After a reboot or in a restarted container the file's pid may belong to another program by now:
    # taking that for a running server would wait in vain, and pg_ctl stop would signal a stranger.
    with contextlib.suppress(OSError):  # no /proc (not Linux): trust the pid
        if Path(f"/proc/{pid}/comm").read_text().strip() not in ("postgres", "postmaster"):
            return None
    return port


def _closed_ancestor(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to ``path`` that ``user`` may not search (mode bits only, no ACLs)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr).strip()


def serve(cluster: PgCluster, cmd: list[str]) -> int:
    """Start (or reuse) the cluster, run ``cmd`` with DATABASE_URL set, stop the cluster when it exits."""
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:
            raise KeyboardInterrupt  # still starting: give up, the finally below stops the cluster
        # A closed terminal (SIGHUP) means stop, gracefully: the server treats SIGTERM so.
        child.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        cluster.start()
        cluster.ensure_database("minitalk")
        url = cluster.url()
        where = f"PostgreSQL in {cluster.data_dir} (log {cluster.log_path})"
        print(f"pg_cluster: {where}, DATABASE_URL={url}", file=sys.stderr, flush=True)
        try:
            # Its own process group: a terminal's Ctrl-C reaches only us and is forwarded once. In our group it
            # would get it twice, and the server takes a second signal as "cut at once".
            child = subprocess.Popen(cmd, env={**os.environ, "DATABASE_URL": url}, process_group=0)
        except OSError as exc:
            print(f"pg_cluster: cannot run {cmd[0]}: {exc}", file=sys.stderr)
            return 127
        returncode = child.wait()
        return 128 - returncode if returncode < 0 else returncode
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pg_cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [
        ("serve", "start (or reuse) the cluster, run CMD with DATABASE_URL set, stop the cluster when CMD exits"),
        ("start", "start (or reuse) the cluster and leave it running"),
        ("stop", "stop the cluster if it runs"),
        ("url", "print the cluster's DATABASE_URL"),
    ]:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--data", default="./data/pg", help="the cluster's directory (PGDATA); default ./data/pg")
        if name in ("serve", "start"):
            p.add_argument("--port", type=int, help="default: the port it last ran on, else 5432")
        if name == "serve":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    data = Path(args.data)
    try:
        if args.command == "url":
            port = recorded_port(data.resolve())
            if port is None:
                parser.error(f"no cluster has been started in {data}")
            print(PgCluster(data, port).url())
            return 0
        if args.command == "stop":
            PgCluster(data).stop()
            return 0
        port = args.port or recorded_port(data.resolve()) or 5432
        cluster = PgCluster(data, port, bin_dir=ensure_installed())
        if not cluster.is_running() and not port_is_free(port):
            parser.error(f"port {port} on 127.0.0.1 is in use by another program: pass --port")
        if args.command == "start":
            cluster.start()
            cluster.ensure_database("minitalk")
            print(f"pg_cluster: PostgreSQL in {cluster.data_dir} (log {cluster.log_path}), {cluster.url()}")
            return 0
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("serve needs a command after --")
        return serve(cluster, cmd)
    except (PostgresUnavailable, PgClusterError) as exc:
        print(f"pg_cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # Ctrl-C while starting up (serve has stopped its cluster in its finally)


if __name__ == "__main__":
    sys.exit(main())

"""Several minitalk-trio processes on one local PostgreSQL, behind HAProxy on one port.

    .venv/bin/python -m tools.cluster run --processes 3 --port 4000 --data ./data/pg -- --log-level warning

``run`` starts (or reuses) the PostgreSQL cluster in ``--data`` as ``tools.pg_cluster`` does and creates
database ``minitalk``, starts N ``python -m server`` processes on free 127.0.0.1 ports with ``DATABASE_URL``
set, waits until each answers ``/ready``, then runs HAProxy on 127.0.0.1:PORT with ``deploy/haproxy.cfg``
rendered for those ports. Each process's log lines are echoed with its name in front (``app1| ...``).
Ctrl-C or SIGTERM stops HAProxy, then the servers (SIGTERM: they commit, ack and close gracefully), then
PostgreSQL. A server that dies is reported and HAProxy's health checks take it out; the run ends when HAProxy
or every server is gone.

For the tests: :func:`ensure_haproxy`, :func:`render_config` and :class:`HaproxyFront` (HAProxy in front of
given ports, with its admin socket for ``show stat`` / ``show table``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from tools.debian import find_or_install
from tools.pg_cluster import (
    MAX_SOCKET_PATH,
    PgCluster,
    PgClusterError,
    PostgresUnavailable,
    ensure_installed,
    port_is_free,
    recorded_port,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "haproxy.cfg"
BACKEND = "minitalk"  # the template's backend: its servers, its stick table
HAPROXY_FALLBACK = Path("/usr/sbin/haproxy")  # Debian's place, off a non-root user's PATH
START_TIMEOUT = 10.0  # HAProxy listening and answering on its admin socket
READY_TIMEOUT = 30.0  # a server answering 200 on /ready
STOP_TIMEOUT = 30.0  # a server's graceful stop: its own bound is --shutdown-timeout (10 s) + 2 s
TOOL_TIMEOUT = 600.0  # apt-get, haproxy -c
_LISTENING = re.compile(rb"listening on http://\S+?:(\d+)")
_SECTION = re.compile(r"^(?P<indent>[ \t]*)# >>> (?P<name>\w+)\n.*?^[ \t]*# <<< (?P=name)\n", re.MULTILINE | re.DOTALL)


class HaproxyUnavailable(RuntimeError):
    """HAProxy is not on this machine and could not be installed."""


class ClusterError(RuntimeError):
    """A component did not start or stop as it should; the message carries its output."""


def find_haproxy() -> Path:
    """The ``haproxy`` executable: on PATH, else Debian's ``/usr/sbin/haproxy``."""
    found = shutil.which("haproxy")
    if found is not None:
        return Path(found)
    if os.access(HAPROXY_FALLBACK, os.X_OK):
        return HAPROXY_FALLBACK
    raise HaproxyUnavailable(
        "haproxy was not found on PATH or at /usr/sbin/haproxy: install HAProxy 2.6 or newer (Debian/Ubuntu: "
        "`apt-get install haproxy`, elsewhere your distribution's haproxy package) and try again."
    )


def ensure_haproxy() -> Path:
    """``find_haproxy()``, installing Debian's ``haproxy`` package first when it is absent and we are root."""
    # The package does not start its service in a container (no init), and we never use it: we run our own.
    return find_or_install(find_haproxy, HaproxyUnavailable, "haproxy")


def server_name(index: int) -> str:
    """The HAProxy name of the ``index``-th backend (from 1), as ``render_config`` writes it."""
    return f"app{index}"


def render_config(
    ports: Sequence[int],
    listen_port: int,
    stats_socket: Path,
    *,
    host: str = "127.0.0.1",
    backend_host: str = "127.0.0.1",
    template: str | None = None,
) -> str:
    """``deploy/haproxy.cfg`` with its three marked sections filled in; everything else as it is.

    ``listen``: HAProxy's bind address; ``stats``: its admin socket; ``servers``: one ``server appN`` line per
    port, in order (``check`` and the health-check timing come from the template's ``default-server``).
    """
    if not ports:
        raise ValueError("HAProxy needs at least one backend port")
    for name, value in (("stats socket path", str(stats_socket)), ("host", host), ("backend host", backend_host)):
        if not value or re.search(r"[\s\"'#\\]", value):
            raise ValueError(f"the {name} {value!r} cannot be written into a HAProxy config as it is")
    if len(str(stats_socket).encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"the stats socket path {stats_socket} is longer than a Unix socket path may be")
    sections = {
        "listen": [f"bind {host}:{listen_port}"],
        "stats": [f"stats socket {stats_socket} mode 600 level admin"],
        "servers": [f"server {server_name(i)} {backend_host}:{port}" for i, port in enumerate(ports, 1)],
    }
    text = template if template is not None else TEMPLATE.read_text()
    seen: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name, indent = match["name"], match["indent"]
        if name not in sections:
            raise ValueError(f"the template has a section {name!r} that render_config does not know")
        seen.append(name)
        body = "".join(f"{indent}{line}\n" for line in sections[name])
        return f"{indent}# >>> {name}\n{body}{indent}# <<< {name}\n"

    rendered = _SECTION.sub(fill, text)
    if sorted(seen) != sorted(sections):
        raise ValueError(f"the template must mark each of {sorted(sections)} once; it marks {sorted(seen)}")
    return rendered


class _Relay:
    """Reads a child's output on a thread until EOF: keeps the last lines, echoes each with a prefix if asked."""

    def __init__(self, stream: IO[bytes], prefix: str, *, echo: bool, watch: re.Pattern[bytes] | None = None):
        self._stream = stream
        self._prefix = prefix
        self._echo = echo
        self._watch = watch
        self.lines: deque[str] = deque(maxlen=400)
        self.match: re.Match[bytes] | None = None
        self.matched = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay {prefix}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._stream:  # closed at EOF, that is when the child (and whoever shares the pipe) is gone
            for raw in self._stream:
                if self._watch is not None and self.match is None:
                    self.match = self._watch.search(raw)
                    if self.match is not None:
                        self.matched.set()
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if self._echo:
                    print(f"{self._prefix}| {line}", file=sys.stderr, flush=True)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.lines)[-lines:])


def check_config(haproxy: Path, config: Path) -> None:
    """``haproxy -c``: raise ClusterError with HAProxy's own words when it rejects ``config``."""
    check = subprocess.run(
        [str(haproxy), "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT
    )
    if check.returncode != 0:
        raise ClusterError(f"haproxy -c rejected {config}:\n{(check.stdout + check.stderr).strip()}")


class HaproxyFront:
    """HAProxy on ``host:listen_port`` in front of minitalk-trio processes on 127.0.0.1 ``ports``.

    ``start()`` renders ``deploy/haproxy.cfg`` into a directory of its own (``workdir``, else a temporary one,
    removed by ``stop()``), checks it with ``haproxy -c``, runs ``haproxy -f <cfg> -db`` and returns once
    HAProxy listens. Its output is kept (``log()``) and, with ``echo``, printed to stderr as ``haproxy| ...``.
    ``template``: another config text to render instead of ``deploy/haproxy.cfg`` (the tests' control case).
    The backends are named ``app1``, ``app2``, ... in the order of ``ports`` (``servers``).
    """

    def __init__(
        self,
        ports: Sequence[int],
        listen_port: int,
        *,
        host: str = "127.0.0.1",
        haproxy: Path | None = None,
        workdir: Path | None = None,
        echo: bool = False,
        template: str | None = None,
    ) -> None:
        self.servers = {server_name(i): port for i, port in enumerate(ports, 1)}
        self.listen_port = listen_port
        self.host = host
        self.url = f"http://{host}:{listen_port}"
        self._haproxy = haproxy
        self._workdir = workdir
        self._echo = echo
        self._template = template
        self._own_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._relays: list[_Relay] = []
        self.config_path: Path | None = None
        self.stats_socket: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None:
            raise ClusterError("this HaproxyFront has been started already")
        haproxy = self._haproxy if self._haproxy is not None else find_haproxy()
        if self._workdir is not None:
            directory = self._workdir
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = self._own_dir = Path(tempfile.mkdtemp(prefix="minitalk-haproxy-"))
        try:
            self.stats_socket = directory / "admin.sock"
            self.config_path = directory / "haproxy.cfg"
            config = render_config(
                list(self.servers.values()),
                self.listen_port,
                self.stats_socket,
                host=self.host,
                template=self._template,
            )
            self.config_path.write_text(config)
            check_config(haproxy, self.config_path)
            # Its own process group: a terminal's Ctrl-C reaches only the tool, which stops HAProxy in turn.
            self._proc = subprocess.Popen(
                [str(haproxy), "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,
            )
            assert self._proc.stdout is not None and self._proc.stderr is not None
            # stdout: the `log stdout` lines (server UP/DOWN, ...), echoed. stderr: its start-up notices and
            # alerts, then the same events again as warnings (-q would silence the log too): kept, not echoed.
            self._relays = [
                _Relay(self._proc.stderr, "haproxy", echo=False),
                _Relay(self._proc.stdout, "haproxy", echo=self._echo),
            ]
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                for relay in self._relays:
                    relay.join(timeout=2)
                raise ClusterError(f"haproxy exited with code {self._proc.returncode} at start:\n{self.log()}")
            with contextlib.suppress(OSError):
                # Both up: the frontend accepts, and the admin socket (bound at the same time) answers.
                with socket.create_connection((self.host, self.listen_port), timeout=1):
                    pass
                self.command("show info")
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"haproxy did not listen on {self.url} within {START_TIMEOUT:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop HAProxy at once (SIGTERM: its hard stop closes every connection); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for relay in self._relays:
            relay.join(timeout=5)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once HAProxy has exited (None while it runs past ``timeout``)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self) -> str:
        """HAProxy's last lines: its stderr (start-up notices, alerts), then its log (server UP/DOWN, ...)."""
        return "\n".join(relay.tail() for relay in self._relays if relay.lines)

    def command(self, line: str, *, timeout: float = 2.0) -> str:
        """One command on HAProxy's admin socket (``show stat``, ``show table minitalk``, ...) and its answer."""
        if self.stats_socket is None:
            raise ClusterError("HAProxy has not been started")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            answer = bytearray()
            while chunk := sock.recv(65536):  # not in interactive mode: HAProxy closes after one answer
                answer += chunk
        return answer.decode(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as rows (the proxies, their servers, FRONTEND and BACKEND lines), by column name."""
        text = self.command("show stat").lstrip("# ")
        return [row for row in csv.DictReader(text.splitlines()) if row.get("pxname")]

    def server_states(self) -> dict[str, str]:
        """Each backend's state as HAProxy sees it: ``UP``, ``DOWN``, ``UP 1/2`` (going down), ``MAINT``, ..."""
        return {
            row["svname"]: row["status"]
            for row in self.stats()
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def sticky_server(self, sid: str) -> str | None:
        """The backend the stick table sends Engine.IO session ``sid`` to, if HAProxy has learnt it."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", sid):
            raise ValueError(f"not an Engine.IO sid: {sid!r}")
        match = re.search(r"\bserver_key=(\S+)", self.command(f"show table {BACKEND} key {sid}"))
        return match.group(1) if match else None

    def __enter__(self) -> HaproxyFront:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Interrupted(Exception):
    """A stop signal arrived while the cluster was starting."""


class ServerChild:
    """One ``python -m server`` of ``run``: on a free port (``--port 0``), its output echoed as ``name| ...``."""

    def __init__(self, name: str, extra_args: Sequence[str], database_url: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", *extra_args],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,  # as HAProxy: the terminal's Ctrl-C must not reach it twice (twice means "cut now")
        )
        assert self.proc.stdout is not None
        self.relay = _Relay(self.proc.stdout, name, echo=True, watch=_LISTENING)
        self.port: int | None = None
        self.reported_exit = False

    def wait_ready(self, stopping: threading.Event) -> int:
        """Wait for the "listening on" line, then for /ready 200; the port."""
        deadline = time.monotonic() + READY_TIMEOUT
        while self.port is None:
            if self.relay.matched.wait(0.05):
                assert self.relay.match is not None
                self.port = int(self.relay.match.group(1))
            self._check(deadline, stopping, "listen")
        while not _ready(self.port):
            self._check(deadline, stopping, f"answer 200 on http://127.0.0.1:{self.port}/ready")
            time.sleep(0.1)
        return self.port

    def _check(self, deadline: float, stopping: threading.Event, what: str) -> None:
        if stopping.is_set():
            raise _Interrupted
        if self.proc.poll() is not None:
            self.relay.join(timeout=2)
            raise ClusterError(f"{self.name} exited with code {self.proc.returncode} before it could {what}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{self.name} did not {what} within {READY_TIMEOUT:.0f} s")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> int:
        try:
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"cluster: {self.name} did not stop in time: killed", file=sys.stderr, flush=True)
            self.proc.kill()
            code = self.proc.wait()
        self.relay.join(timeout=5)
        return code


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False  # 503 (HTTPError) while starting, or not answering yet


def run(
    cluster: PgCluster,
    *,
    processes: int,
    port: int,
    server_args: Sequence[str],
    haproxy: Path,
    say: Callable[[str], None],
) -> int:
    """The ``run`` command: everything up, wait for a stop signal, everything down in order; the exit code."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            say(f"cluster: already stopping ({signal.Signals(signum).name} ignored)")
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    servers: list[ServerChild] = []
    front: HaproxyFront | None = None
    code = 0
    try:
        cluster.start()
        cluster.ensure_database("minitalk")
        url = cluster.url()
        say(f"cluster: postgresql  {url}  (data {cluster.data_dir}, log {cluster.log_path})")
        servers = [ServerChild(server_name(i), server_args, url) for i in range(1, processes + 1)]
        for server in servers:
            ready_port = server.wait_ready(stopping)
            say(f"cluster: {server.name:<10}  http://127.0.0.1:{ready_port}  (pid {server.proc.pid}, ready)")
        front = HaproxyFront([s.port for s in servers if s.port is not None], port, haproxy=haproxy, echo=True)
        front.start()
        say(
            f"cluster: haproxy     {front.url}  (pid {front.pid}) -> {' '.join(front.servers)}"
            f"  (config {front.config_path}, admin socket {front.stats_socket})"
        )
        say(f"cluster: ready on {front.url}; Ctrl-C stops HAProxy, then the servers, then PostgreSQL")
        code = _watch(front, servers, stopping, say)
    except _Interrupted:
        code = 128 + signal.SIGINT
    except (ClusterError, PgClusterError) as exc:
        say(f"cluster: {exc}")
        code = 1
    finally:
        _shutdown(front, servers, cluster, say)
    return code


def _watch(
    front: HaproxyFront, servers: list[ServerChild], stopping: threading.Event, say: Callable[[str], None]
) -> int:
    """Until a stop signal: report a server that exits; end (1) when HAProxy or every server is gone."""
    while not stopping.wait(0.5):
        for server in servers:
            if server.proc.poll() is not None and not server.reported_exit:
                server.reported_exit = True
                say(f"cluster: {server.name} exited with code {server.proc.returncode}; HAProxy takes it out")
        if not front.running():
            say(f"cluster: haproxy exited with code {front.wait()}:\n{front.log()}")
            return 1
        if all(server.reported_exit for server in servers):
            say("cluster: every server has exited")
            return 1
    return 0


def _shutdown(
    front: HaproxyFront | None, servers: list[ServerChild], cluster: PgCluster, say: Callable[[str], None]
) -> None:
    if front is not None:
        front.stop()
        say("cluster: haproxy stopped")
    for server in servers:
        server.terminate()  # all at once: each drains on its own, within its own bound
    deadline = time.monotonic() + STOP_TIMEOUT
    for server in servers:
        code = server.wait_stopped(deadline)
        if not server.reported_exit:
            say(f"cluster: {server.name} stopped (exit code {code})")
    try:
        cluster.stop()
        say("cluster: postgresql stopped")
    except PgClusterError as exc:
        say(f"cluster: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    help_ = "PostgreSQL, N servers on it and HAProxy in front of them until Ctrl-C"
    p = sub.add_parser("run", help=help_, description=help_)
    p.add_argument("--processes", type=int, default=3, help="how many server processes (default 3)")
    p.add_argument("--port", type=int, default=4000, help="HAProxy's port on 127.0.0.1 (default 4000)")
    p.add_argument("--data", default="./data/pg", help="the PostgreSQL cluster's directory (default ./data/pg)")
    p.add_argument("--pg-port", type=int, help="PostgreSQL's port (default: the port it last ran on, else 5432)")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="-- options for every `python -m server`")
    args = parser.parse_args(argv)
    server_args: list[str] = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if any(arg == "--port" or arg.startswith("--port=") for arg in server_args):
        parser.error("the servers' ports are chosen by the tool (free ports): do not pass --port after --")
    if not port_is_free(args.port):
        parser.error(f"port {args.port} on 127.0.0.1 is in use by another program: pass --port")

    def say(line: str) -> None:
        print(line, flush=True)

    data = Path(args.data)
    try:
        haproxy = ensure_haproxy()
        pg_port = args.pg_port or recorded_port(data.resolve()) or 5432
        cluster = PgCluster(data, pg_port, bin_dir=ensure_installed())
        if not cluster.is_running() and not port_is_free(pg_port):
            parser.error(f"port {pg_port} on 127.0.0.1 is in use by another program: pass --pg-port")
        return run(cluster, processes=args.processes, port=args.port, server_args=server_args, haproxy=haproxy, say=say)
    except (HaproxyUnavailable, PostgresUnavailable, PgClusterError) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

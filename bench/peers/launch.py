"""Start a peer server pinned to the server core; a peer whose runtime is missing is skipped, never faked."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.target import ROOT, Target, TargetError, pin_prefix, pinned_cores, server_cores

NODE_DIR = Path(__file__).resolve().parent / "node"
PEERS = ("python-socketio", "node-socket.io")


class PeerUnavailable(RuntimeError):
    """The peer's runtime is not on this machine (the message says what is missing)."""


def start_peer(name: str) -> Target:
    if name == "python-socketio":
        missing = [m for m in ("uvicorn", "socketio") if importlib.util.find_spec(m) is None]
        if missing:
            raise PeerUnavailable(
                f"python-socketio skipped: {', '.join(missing)} not installed (pip install -e '.[bench]')"
            )
        return _start(
            name,
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.peers.pysio_server:app",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-level",
                "info",
            ],
            re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)"),
            cwd=ROOT,
            settings={"stack": "python-socketio AsyncServer + uvicorn (uvloop, httptools)"},
        )
    if name == "node-socket.io":
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise PeerUnavailable("node-socket.io skipped: `node` and `npm` are not on PATH")
        if not (NODE_DIR / "node_modules" / "socket.io").exists():
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise PeerUnavailable(f"node-socket.io skipped: npm ci failed: {done.stderr.strip()[-300:]}")
        version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        return _start(
            name,
            [node, "server.js"],
            re.compile(r"listening on (\d+)"),
            cwd=NODE_DIR,
            settings={"stack": f"socket.io 4.8 + express on Node {version}"},
            env={"PORT": "0"},
        )
    raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def _start(
    name: str,
    command: list[str],
    ready: re.Pattern[str],
    *,
    cwd: Path,
    settings: dict[str, object],
    env: dict[str, str] | None = None,
) -> Target:
    workdir = tempfile.mkdtemp(prefix=f"minitalk-peer-{name}-")
    log_path = Path(workdir) / "peer.log"
    cores, _ = server_cores()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*pin_prefix(cores), *command],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if match := ready.search(text):
            return Target(
                name,
                f"http://127.0.0.1:{match.group(1)}",
                pid=proc.pid,
                settings={**settings, "pinned_cores": pinned_cores(cores)},
                proc=proc,
                workdir=workdir,
                persists=False,
            )
        if proc.poll() is not None:
            raise TargetError(f"{name} exited before listening:\n{text[-1500:]}")
        time.sleep(0.05)
    proc.kill()
    raise TargetError(f"{name} did not start listening within 60 s")

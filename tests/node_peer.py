"""The MinitalkChat frontend's client stack (socket.io-client 4.8.1 on Node) as a test peer, driven from trio.

``tests/node_client/recovery_client.js`` builds the socket as the frontend does and talks JSON lines: it
reports every ``connect`` (with ``socket.recovered``), ``disconnect`` and ``message`` on stdout and takes
``drop`` / ``exit`` commands on stdin. ``tests/node_client/reference_server.js`` is socket.io 4.8.1 with its
own connection state recovery, the reference the harness is checked against. Their packages come from the
committed lockfile with ``npm ci`` on first use (as ``bench/peers/launch.py`` installs the Node peer); without
``node`` and ``npm`` the tests that need them are skipped with a line saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any, Self

import pytest
import trio

NODE_DIR = Path(__file__).resolve().parent / "node_client"
SCRIPT = NODE_DIR / "recovery_client.js"


def node_or_skip() -> str:
    """The ``node`` executable, with the lockfile's packages installed; skips the test when that cannot be."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("socket.io-client tests need `node` and `npm` on PATH (Node 20: the frontend's toolchain)")
    # npm writes node_modules/.package-lock.json on every install: older than the lockfile means stale.
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lockfile = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lockfile.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"`npm ci` in {NODE_DIR} failed (is the npm registry reachable?): {done.stderr[-300:]}")
    return node


class JsonLinesProcess:
    """A Node script that reports JSON lines on stdout and takes JSON-line commands on stdin."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []  # every report, in order
        self.stderr = bytearray()

    @classmethod
    async def _launch(cls, nursery: trio.Nursery, argv: list[str]) -> Self:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                cwd=NODE_DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        launched = cls(proc)
        nursery.start_soon(launched._read_reports)
        nursery.start_soon(launched._drain_stderr)
        return launched

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["ev"] == kind]

    def describe(self) -> str:
        """What to print when a test fails: the reports other than messages, and the script's stderr."""
        others = [event for event in self.events if event["ev"] != "message"]
        return f"reports: {others}\nstderr: {self.stderr.decode(errors='replace')}"

    async def command(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def _read_reports(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        while chunk := await self.proc.stdout.receive_some(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            self.events += [json.loads(line) for line in lines if line]

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.receive_some(65536):
            self.stderr += chunk


class NodeClient(JsonLinesProcess):
    """One running ``recovery_client.js``: a frontend socket connected to ``url`` with ``token``."""

    @classmethod
    async def start(cls, nursery: trio.Nursery, node: str, url: str, token: str) -> NodeClient:
        return await cls._launch(nursery, [node, str(SCRIPT), url, token])

    @property
    def connects(self) -> list[dict[str, Any]]:
        return self.of("connect")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.of("message")

    async def drop(self, away: float) -> None:
        """Close the connection under the socket; the same socket reconnects ``away`` seconds later."""
        await self.command({"cmd": "drop", "away_ms": round(away * 1000)})

    async def exit(self) -> None:
        if self.proc.returncode is None:
            await self.command({"cmd": "exit"})
            with trio.fail_after(10):
                await self.proc.wait()


class ReferenceServer(JsonLinesProcess):
    """``reference_server.js``: socket.io 4.8.1 with connection state recovery, one room, bombed on command."""

    @classmethod
    async def start(cls, nursery: trio.Nursery, node: str) -> ReferenceServer:
        server = await cls._launch(nursery, [node, str(NODE_DIR / "reference_server.js")])
        with trio.fail_after(30):
            while not server.of("listening"):  # noqa: ASYNC110 (filled by the reader task)
                await trio.sleep(0.01)
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.of('listening')[0]['port']}"

    async def bomb(self, count: int, every: float) -> None:
        await self.command({"cmd": "bomb", "count": count, "every_ms": round(every * 1000)})

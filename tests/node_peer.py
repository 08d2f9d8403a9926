"""The MinitalkChat frontend's client stack (socket.io-client 4.8.1 on Node) as a test peer, driven from trio.

``tests/node_client/recovery_client.js`` builds the socket as the frontend does and talks JSON lines: it
reports every ``connect`` (with ``socket.recovered``), ``disconnect`` and ``message`` on stdout and takes
``drop`` / ``exit`` commands on stdin. Its packages come from the committed lockfile with ``npm ci`` on first
use (as ``bench/peers/launch.py`` installs the Node peer); without ``node`` and ``npm`` the tests that need it
are skipped with a line saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

NODE_DIR = Path(__file__).resolve().parent / "node_client"
SCRIPT = NODE_DIR / "recovery_client.js"
CLIENT_VERSION = "4.8.1"  # the frontend's resolved socket.io-client (contract §0)


def node_or_skip() -> str:
    """The ``node`` executable, with the lockfile's packages installed; skips the test when that cannot be."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("socket.io-client tests need `node` and `npm` on PATH (Node 20: the frontend's toolchain)")
    installed = NODE_DIR / "node_modules" / "socket.io-client" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != CLIENT_VERSION:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"`npm ci` in {NODE_DIR} failed (is the npm registry reachable?): {done.stderr[-300:]}")
    return node


class NodeClient:
    """One running ``recovery_client.js``; its reports land in the lists below as they arrive."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []  # every report, in order
        self.stderr = bytearray()

    @classmethod
    async def start(cls, nursery: trio.Nursery, node: str, url: str, token: str) -> NodeClient:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [node, str(SCRIPT), url, token],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        client = cls(proc)
        nursery.start_soon(client._read_reports)
        nursery.start_soon(client._drain_stderr)
        return client

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["ev"] == kind]

    @property
    def connects(self) -> list[dict[str, Any]]:
        return self.of("connect")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.of("message")

    async def drop(self, away: float) -> None:
        """Close the connection under the socket; the same socket reconnects ``away`` seconds later."""
        await self._command({"cmd": "drop", "away_ms": round(away * 1000)})

    async def exit(self) -> None:
        if self.proc.returncode is None:
            await self._command({"cmd": "exit"})
            with trio.fail_after(10):
                await self.proc.wait()

    def describe(self) -> str:
        """What to print when a test fails: the non-message reports and the script's stderr."""
        others = [event for event in self.events if event["ev"] != "message"]
        return f"reports: {others}\nmessages: {len(self.messages)}\nstderr: {self.stderr.decode(errors='replace')}"

    async def _command(self, command: dict[str, Any]) -> None:
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

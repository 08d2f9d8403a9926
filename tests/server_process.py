"""Run ``python -m server`` as a real child process on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, proc: trio.Process, port: int, log: bytearray) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    async def terminate(self) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        # The server's own bound is shutdown_timeout (10 s) + 2 s of margin; allow a little more.
        with trio.fail_after(15):
            return await self.proc.wait()


async def start_server_process(
    nursery: trio.Nursery,
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    nofile: tuple[int, int] | None = None,
) -> ServerProcess:
    """Start the server and wait until it logs the port it listens on.

    ``nofile``: the child's (soft, hard) RLIMIT_NOFILE, set before it starts, for descriptor-exhaustion tests.
    """
    full_env = {**os.environ, **(env or {})}

    def limit_descriptors() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [sys.executable, "-m", "server", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=full_env,
            check=False,
            preexec_fn=limit_descriptors if nofile is not None else None,
        )
    )
    assert proc.stderr is not None
    log = bytearray()
    with trio.fail_after(ready_timeout):
        while (match := _LISTENING.search(log)) is None:
            chunk = await proc.stderr.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"server exited before listening:\n{log.decode(errors='replace')}")
            log += chunk
    nursery.start_soon(_drain, proc.stderr, log)
    return ServerProcess(proc, int(match.group(1)), log)


async def run_refused_server(args: Sequence[str], *, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m server`` that is expected to refuse to start: its exit code and its stderr."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "server", "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stderr.decode()


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


async def _drain(stream: trio.abc.ReceiveStream, log: bytearray) -> None:
    # Keep reading so the child never blocks on a full stderr pipe; keep the text for assertions.
    while chunk := await stream.receive_some(65536):
        log += chunk

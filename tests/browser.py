"""Real browsers for the web UI tests: Debian's Chromium driven by Playwright, a server process, screenshots.

Playwright's own browser download is not used (and not reachable here): it drives ``/usr/bin/chromium``,
installed with apt-get when missing and we are root (``tools/debian.py``). Without it the browser tests are
skipped, or fail under ``CI`` (``installed_or_skip``).

The browser tests are plain (synchronous) tests: Playwright's sync API runs its own asyncio loop and cannot
run inside trio, and pytest-trio's ``trio_mode`` touches only ``async def`` tests. So the server here is a
child process started with ``subprocess`` and the load is the python-socketio sync client in threads.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from playwright.sync_api import Page

from tools.debian import apt_install, can_install

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where each browser test keeps its step screenshots when it fails (removed when it passes).
ARTIFACTS = Path(os.environ.get("MINITALK_TEST_ARTIFACTS", ROOT / "tmp" / "test-artifacts"))
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ChromiumUnavailable(Exception):
    pass


def ensure_chromium() -> Path:
    """Debian's chromium, installed when missing and the machine allows it (root with apt-get)."""
    if not CHROMIUM.exists() and can_install():
        apt_install("chromium")
    if not CHROMIUM.exists():
        raise ChromiumUnavailable(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium")
    return CHROMIUM


class ServerProcess:
    """``python -m server`` on 127.0.0.1 with a free port and a database of its own in a temporary directory."""

    url: str

    def __init__(self, args: Sequence[str] = (), *, ready_timeout: float = 30.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="minitalk-web-"))
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--port",
                "0",
                "--database",
                f"sqlite:///{self.dir / 'minitalk.db'}",
                "--bcrypt-rounds",
                "4",
                "--bcrypt-batch-rounds",
                "4",
                "--shutdown-timeout",
                "5",
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._port: int | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(ready_timeout) or self._port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{self._port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # drained to the end: the child never blocks on a full pipe
            self.log.append(line)
            if self._port is None and (match := _LISTENING.search(line)) is not None:
                self._port = int(match.group(1))
                self._listening.set()
        self._listening.set()  # exited before listening: stop waiting

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


class Steps:
    """Screenshots of every page at each named step, kept (with the server's log) only when the test fails.

    ``with steps:`` around the test body: a failure gets a last screenshot of each page and a note naming
    the directory, which pytest prints under the error.
    """

    def __init__(self, name: str, server: ServerProcess | None = None) -> None:
        self.dir = ARTIFACTS / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.server = server
        self.pages: dict[str, Page] = {}
        self.count = 0

    def add(self, label: str, page: Page) -> Page:
        self.pages[label] = page
        return page

    def shot(self, step: str) -> None:
        self.count += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        for label, page in self.pages.items():
            if not page.is_closed():
                page.screenshot(path=str(self.dir / f"{self.count:02d}-{step}-{label}.png"), timeout=10_000)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if error is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        try:
            self.shot("failure")
        except Exception:  # a crashed page must not hide the test's own error
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "screenshot-error.txt").write_text(traceback.format_exc())
        if self.server is not None:
            (self.dir / "server.log").write_text("".join(self.server.log))
        error.add_note(f"step screenshots and the server log: {self.dir}")


def poll(condition: Callable[[], bool], *, within: float = 15.0, every: float = 0.05, what: str = "it") -> None:
    """Wait for ``condition()`` to be true; fail after ``within`` s (a hang guard, not a speed assertion)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(every)

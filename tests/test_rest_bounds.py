"""Every query parameter of the history route, fuzzed over HTTP against a real server: never a 500.

Hypothesis drives a synchronous test (one example after another), so the server runs in its own
``trio.run`` on a background thread for the whole module and the examples talk to it over loopback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.service import MinitalkServer
from tests.conftest import make_config


class ThreadedServer:
    """A server in its own Trio loop on a thread: for synchronous tests (hypothesis) that need one."""

    def __init__(self, db_path: Path) -> None:
        self.server = MinitalkServer(make_config(db_path))
        self._started: queue.Queue[tuple[int, trio.lowlevel.TrioToken]] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(self.server.run)
            self._started.put((port, trio.lowlevel.current_trio_token()))

    def __enter__(self) -> str:
        self._thread.start()
        port, self._token = self._started.get(timeout=30)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        trio.from_thread.run_sync(self.server.request_shutdown, trio_token=self._token)
        self._thread.join(timeout=15)


@pytest.fixture(scope="module")
def history_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    with ThreadedServer(tmp_path_factory.mktemp("bounds") / "minitalk.db") as url, httpx.Client(base_url=url) as http:
        user = {"username": "fuzz", "password": "pw"}
        assert http.post("/api/auth/signup", json=user).status_code == 201
        token = http.post("/api/auth/login", json=user).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        room = http.post("/api/chatrooms", json={"name": "r"}).json()["roomId"]
        yield http, f"/api/chatrooms/{room}/messages"


NUMBERS = st.integers(min_value=-(2**80), max_value=2**80).map(str)
DIGITS = st.text("0123456789", min_size=15, max_size=500)
OFFSETS = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59))
DATES = st.datetimes(timezones=st.none() | st.builds(timezone, OFFSETS)).map(lambda d: d.isoformat())
VALUES = st.text() | NUMBERS | DIGITS | DATES
QUERIES = st.dictionaries(st.sampled_from(["limit", "after_seq", "before_seq", "since"]), VALUES, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=QUERIES)
def test_history_route_never_answers_500(history_url: tuple[httpx.Client, str], query: dict[str, str]) -> None:
    http, url = history_url
    r = http.get(url, params=query)
    assert r.status_code in (200, 400), (query, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    if r.status_code == 400:
        assert isinstance(r.json()["error"], str)

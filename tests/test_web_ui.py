"""The chat at ``/`` and the dashboard at ``/dashboard``: served right, and used by people in real browsers.

The browser tests drive Debian's Chromium with Playwright (tests/browser.py says how and why they are plain
synchronous tests). Every wait is bounded; nothing asserts a speed. Set ``MINITALK_SCREENSHOTS=docs/img``
to write the README's two pictures (``chat.png``, ``dashboard.png``) from this run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
from playwright.sync_api import Browser, BrowserContext, Page, Route, WebSocket, expect, sync_playwright
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.dashboard import Sampler, histogram_quantile
from tests import browser as browser_support
from tests.browser import CHROMIUM_ARGS, ChromiumUnavailable, ServerProcess, Steps, ensure_chromium, poll
from tests.pg_fixtures import installed_or_skip

WAIT_MS = 15_000  # Playwright's bound on every wait and action
# The hang guard of a browser test: the first one may install Chromium with apt-get (a minute or two on a
# fresh machine) before it starts; every wait inside is bounded by WAIT_MS or its own deadline anyway.
BROWSER_TEST = pytest.mark.timeout(300)
SCREENSHOTS = os.environ.get("MINITALK_SCREENSHOTS")
CONNECT_WITH_PID = re.compile(r'40\{"pid":[^}]*\}')  # a Socket.IO CONNECT asking to recover a session


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess()
    yield proc
    assert proc.stop() == 0, "".join(proc.log)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = installed_or_skip(ensure_chromium, ChromiumUnavailable)
    # Playwright's sync API runs a plain asyncio loop of its own; trio-asyncio (imported with the PostgreSQL
    # engine) sets a policy whose loops cannot run that way. The plain policy while the browser lives.
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        asyncio.set_event_loop_policy(policy)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def new_page(browser: Browser, steps: Steps, label: str, *, width: int = 1100, height: int = 760) -> Page:
    context: BrowserContext = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "ERR_INTERNET" not in m.text else None)
    page.errors = errors  # type: ignore[attr-defined]
    return steps.add(label, page)


def users(http: httpx.Client, *names: str) -> dict[str, str]:
    body = {"users": [{"username": n, "password": "pw"} for n in names]}
    assert http.post("/api/auth/signup-batch", json=body).status_code == 201
    r = http.post("/api/auth/login-batch", json=body)
    return {row["username"]: row["token"] for row in r.json()["results"]}


def room_of(http: httpx.Client, token: str, name: str) -> dict[str, Any] | None:
    rooms: list[dict[str, Any]] = http.get("/api/chatrooms", headers={"Authorization": f"Bearer {token}"}).json()
    return next((room for room in rooms if room["name"] == name), None)


def log_in(page: Page, url: str, username: str, *, signup: bool = False) -> None:
    page.goto(url + "/")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill("pw")
    page.get_by_role("button", name="Sign up" if signup else "Log in").click()
    expect(page.locator("#whoami")).to_have_text(f"Signed in as {username}")


def send(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.keyboard.press("Enter")


def rows(page: Page, text: str | None = None) -> Any:
    messages = page.locator("#messages li")
    return messages if text is None else messages.filter(has_text=text)


def ids_on_screen(page: Page) -> list[str]:
    found: list[str] = page.eval_on_selector_all("#messages li[data-id]", "els => els.map(e => e.dataset.id)")
    return found


def keep_screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=full_page)


# ------------------------------------------------------------------------------------------------ serving


def test_pages_and_files_are_served_with_their_types_and_cache_headers(http: httpx.Client) -> None:
    for path, kind in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard", "text/html; charset=utf-8"),
        ("/web/chat.js", "text/javascript; charset=utf-8"),
        ("/web/style.css", "text/css; charset=utf-8"),
        ("/web/vendor/socket.io.esm.min.js", "text/javascript; charset=utf-8"),
        ("/web/vendor/LICENSE", "text/plain; charset=utf-8"),
        ("/web/vendor/VERSION", "text/plain; charset=utf-8"),
    ]:
        r = http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == kind, path
        assert r.headers["cache-control"] == "no-cache", path
        assert r.headers["x-content-type-options"] == "nosniff"
        # Unchanged: revalidated with the ETag, no body.
        again = http.get(path, headers={"If-None-Match": r.headers["etag"]})
        assert (again.status_code, again.content) == (304, b""), path
    page = http.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert b'<script type="module" src="/web/chat.js">' in page.content
    assert http.head("/").status_code == 200
    assert "socket.io-client 4.8." in http.get("/web/vendor/VERSION").text
    for missing in ["/web/nope.js", "/web/..%2F..%2Fpyproject.toml", "/web/", "/index.html"]:
        r = http.get(missing)
        assert r.status_code == 404, missing
        assert r.json()["error"].startswith("Cannot GET"), missing


def test_with_a_metrics_port_the_public_port_has_the_chat_and_no_dashboard() -> None:
    server = ServerProcess(["--metrics-port", "0"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/").status_code == 200
            for path in ["/dashboard", "/dashboard/stream", "/web/dashboard.js", "/metrics"]:
                assert http.get(path).status_code == 404, path
    finally:
        assert server.stop() == 0


def test_the_dashboard_stream_sends_frames_of_every_figure(http: httpx.Client) -> None:
    frames: list[dict[str, Any]] = []
    with http.stream("GET", "/dashboard/stream") as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line.removeprefix("data: ")))
                if len(frames) == 2:
                    break
    first, second = frames
    assert first["accepted_per_s"] is None  # a rate needs two readings
    assert second["accepted_per_s"] is not None and second["accepted_per_s"] >= 0
    assert set(second["connections"]) == {"websocket", "polling"}
    assert second["rss_bytes"] > 0
    # The final metric names (with units) are read: these figures are there from the start.
    assert second["ready"] == 1
    assert second["ingest_queue_capacity_messages"] > 0
    assert second["ingest_queue_messages"] == 0
    assert second["catchup_backlog_messages"] == 0
    assert second["loop_lag_s"] is not None
    assert second["loop_lag_p99_s"] is not None  # sampled every 0.1 s
    assert second["memory_limit_bytes"] is not None
    assert second["rate_limits_total"] == 0
    assert second["alerts"] == []
    assert set(first) == set(second)


def test_quantiles_are_interpolated_within_buckets_as_promql_does() -> None:
    buckets = [(0.1, 0.0), (0.2, 50.0), (0.4, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, [(1.0, 1.0), (float("inf"), 100.0)]) == 1.0  # in +Inf: the top bound
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def test_the_sampler_makes_rates_and_window_quantiles_and_null_for_missing_metrics() -> None:
    registry = CollectorRegistry()
    accepted = Counter("minitalk_messages_accepted", "", registry=registry)
    commit = Histogram("minitalk_receive_to_commit_seconds", "", buckets=(0.01, 0.1, 1), registry=registry)
    Gauge("minitalk_connections", "", ["transport"], registry=registry).labels("websocket").set(3)
    now = [100.0]
    sampler = Sampler(registry, window_s=5, clock=lambda: now[0], alerts=lambda: [{"name": "x"}])
    first = sampler.frame()
    assert first["accepted_per_s"] is None
    assert first["connections"] == {"websocket": 3.0}
    assert first["catchup_backlog_messages"] is None  # not in this registry: null, the page shows a dash
    assert first["alerts"] == [{"name": "x"}]
    accepted.inc(50)
    for _ in range(100):
        commit.observe(0.05)
    now[0] += 2
    second = sampler.frame()
    assert second["accepted_per_s"] == pytest.approx(25)
    assert 0.01 < second["receive_to_commit_p50_s"] <= 0.1
    # Once the observations are older than the window, no quantile: nothing happened lately.
    for _ in range(4):
        now[0] += 2
        last = sampler.frame()
    assert last["receive_to_commit_p99_s"] is None
    assert last["accepted_per_s"] == 0


def test_a_missing_browser_is_a_skip_here_and_a_failure_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser_support, "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setattr(browser_support, "can_install", lambda: False)  # not root: nothing is installed
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        installed_or_skip(ensure_chromium, ChromiumUnavailable)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        installed_or_skip(ensure_chromium, ChromiumUnavailable)


# ------------------------------------------------------------------------------------------------ in a browser


TIMELINE_CASES = """
async () => {
  const { Timeline } = await import("/web/timeline.js");
  const shown = (t) => t.rows("r").map((row) => `${row.content}:${row.status}`);
  const msg = (id, seq, sender, content) => ({ id, seq, sender, content, roomId: "r", timestamp: "" });
  const out = {};

  // Our broadcast arrives before our ack (the server's order): shown once, sending, then sent.
  let t = new Timeline("me");
  t.sending("c1", "r", "hi");
  t.add(msg("m1", 1, "me", "hi"), { live: true });
  out.beforeAck = shown(t);
  t.acked("c1", { ok: true, id: "m1", seq: 1, timestamp: "" });
  out.afterAck = shown(t);
  t.add(msg("m1", 1, "me", "hi")); // history or a replay after a reconnect: no second copy
  out.replayed = shown(t);

  // Two sends of the same text, the first refused: the broadcast belongs to the second.
  t = new Timeline("me");
  t.sending("a", "r", "same");
  t.sending("b", "r", "same");
  t.add(msg("m2", 1, "me", "same"), { live: true });
  t.failed("a", "rate limited");
  t.acked("b", { ok: true, id: "m2", seq: 1, timestamp: "" });
  out.sameText = shown(t);

  // Out of order from several sources: seq order, each once.
  t = new Timeline("me");
  t.add(msg("x3", 3, "bob", "three"), { live: true });
  t.addMany("r", [msg("x1", 1, "bob", "one"), msg("x2", 2, "me", "two"), msg("x3", 3, "bob", "three")]);
  out.merged = shown(t);

  // A retry reuses the entry (and its clientMsgId); a late ack of an earlier try settles it.
  t = new Timeline("me");
  t.sending("c9", "r", "again");
  t.failed("c9", "No answer from the server");
  out.failed = shown(t);
  t.sending("c9", "r", "again");
  t.acked("c9", { ok: true, id: "m9", seq: 1, timestamp: "" });
  t.acked("c9", { ok: true, id: "m9", seq: 1, timestamp: "" });
  out.retried = shown(t).concat(t.rows("r").map((row) => row.clientMsgId));
  return out;
}
"""


@BROWSER_TEST
def test_the_timeline_shows_each_message_once_whatever_the_order(browser: Browser, server: ServerProcess) -> None:
    with Steps("timeline", server) as steps:
        page = new_page(browser, steps, "timeline")
        page.goto(server.url + "/")
        out = page.evaluate(TIMELINE_CASES)
        assert out["beforeAck"] == ["hi:sending"]
        assert out["afterAck"] == out["replayed"] == ["hi:sent"]
        assert out["sameText"] == ["same:sent", "same:failed"]
        assert out["merged"] == ["one:received", "two:sent", "three:received"]
        assert out["failed"] == ["again:failed"]
        assert out["retried"] == ["again:sent", "c9"]


@BROWSER_TEST
def test_two_people_chat_in_real_browsers(browser: Browser, server: ServerProcess, http: httpx.Client) -> None:
    with Steps("two-people-chat", server) as steps:
        tokens = users(http, "bob", "carol")
        alice = new_page(browser, steps, "alice")
        bob = new_page(browser, steps, "bob", width=400, height=760)  # a narrow window: one pane at a time
        sockets: list[str] = []
        for page in (alice, bob):
            page.on("websocket", lambda ws: sockets.append(ws.url))

        # A signs up (and is logged in), B logs in.
        log_in(alice, server.url, "alice", signup=True)
        log_in(bob, server.url, "bob")
        steps.shot("logged-in")

        # A creates a room with B; it opens.
        alice.get_by_label("Name", exact=True).fill("Picnic 🧺")
        alice.get_by_label("Participants").fill("bob")
        alice.get_by_role("button", name="Create room").click()
        expect(alice.locator("#room-title")).to_have_text("Picnic 🧺")
        expect(alice.locator("#room-members")).to_have_text("Members: alice, bob")
        room = room_of(http, tokens["bob"], "Picnic 🧺")
        assert room is not None and room["participants"] == ["alice", "bob"]

        # B sees it in the list (members, creator), opens it.
        bob.get_by_role("button", name="Refresh").click()
        entry = bob.locator(f'button.room[data-room-id="{room["roomId"]}"]')
        expect(entry).to_contain_text("2 members: alice, bob")
        expect(entry).to_contain_text("Created by alice")
        entry.click()
        expect(bob.locator("#room-title")).to_have_text("Picnic 🧺")
        expect(bob.locator("#rooms-pane")).to_be_hidden()  # narrow: the list gives way to the room
        steps.shot("room-open")

        # Messages both ways; the sender's shows as sent once the server acked it.
        send(alice, "hello bob 👋")
        expect(rows(alice, "hello bob 👋")).to_have_attribute("data-status", "sent")
        expect(rows(bob, "hello bob 👋")).to_have_count(1)
        send(bob, "hi alice")
        expect(rows(alice, "hi alice")).to_have_count(1)
        expect(rows(bob, "hi alice")).to_have_attribute("data-status", "sent")
        steps.shot("messages")

        # The websocket upgrade happened, for both.
        for page in (alice, bob):
            expect(page.locator("#conn")).to_have_attribute("data-transport", "websocket")
            assert page.evaluate("window.minitalkSocket.io.engine.transport.name") == "websocket"
        assert sum("/socket.io/" in url and "transport=websocket" in url for url in sockets) >= 2

        # A reload shows the history (each message once), in order.
        bob.reload()
        expect(bob.locator("#room-title")).to_have_text("Picnic 🧺")
        expect(rows(bob)).to_have_count(2)
        expect(rows(bob).nth(0)).to_contain_text("hello bob 👋")
        expect(rows(bob).nth(1)).to_contain_text("hi alice")
        steps.shot("reloaded")

        # A invites C.
        alice.get_by_label("Invite").fill("carol")
        alice.get_by_role("button", name="Invite", exact=True).click()
        expect(alice.locator("#room-members")).to_have_text("Members: alice, bob, carol")
        assert (room_of(http, tokens["carol"], "Picnic 🧺") or {}).get("participants") == ["alice", "bob", "carol"]

        # B's network is cut while A sends: B shows every message exactly once after it comes back.
        expect(bob.locator("#conn")).to_have_attribute("data-state", "online")
        bob.context.set_offline(True)
        expect(bob.locator("#conn")).to_have_attribute("data-state", "offline")  # the websocket really dropped
        away = [f"while you were away {i}" for i in range(5)]
        for text in away:
            send(alice, text)
        for text in away:
            expect(rows(alice, text)).to_have_attribute("data-status", "sent")
        assert rows(bob, "while you were away").count() == 0
        steps.shot("offline")
        bob.context.set_offline(False)
        expect(bob.locator("#conn")).to_have_attribute("data-state", "online", timeout=30_000)
        for text in away:
            expect(rows(bob, text)).to_have_count(1)
        time.sleep(0.5)  # a repeat would arrive right behind
        assert bob.evaluate("window.minitalkSocket.recovered") is True  # the server's connection state recovery
        on_screen = ids_on_screen(bob)
        assert len(on_screen) == len(set(on_screen)) == 7
        assert [rows(bob).nth(i).inner_text().splitlines()[-1] for i in range(2, 7)] == away
        steps.shot("back-online")
        keep_screenshot(alice, "chat.png")

        # The same, for a reconnect the server does not recover (an older client, a storage error at the
        # time): the page reads what it missed with after_seq. The reconnect's CONNECT (sent over polling, the
        # transport every connection starts on) loses its recovery request on the way, as through a proxy
        # that rewrites it: 40{"pid":…,"offset":…} becomes a plain 40.
        stripped: list[str] = []

        def strip_recovery(route: Route) -> None:
            body = route.request.post_data
            if route.request.method == "POST" and body and '40{"pid"' in body:
                stripped.append(body)
                route.continue_(post_data=CONNECT_WITH_PID.sub("40", body))
            else:
                route.continue_()

        bob.route("**/socket.io/**", strip_recovery)
        bob.context.set_offline(True)
        expect(bob.locator("#conn")).to_have_attribute("data-state", "offline")
        later = [f"later {i}" for i in range(3)]
        for text in later:
            send(alice, text)
        for text in later:
            expect(rows(alice, text)).to_have_attribute("data-status", "sent")
        bob.context.set_offline(False)
        expect(bob.locator("#conn")).to_have_attribute("data-state", "online", timeout=30_000)
        for text in later:
            expect(rows(bob, text)).to_have_count(1)
        time.sleep(0.5)
        assert stripped, "the reconnect sent no recovery request to strip"
        assert bob.evaluate("window.minitalkSocket.recovered") is False
        bob.unroute("**/socket.io/**")
        on_screen = ids_on_screen(bob)
        assert len(on_screen) == len(set(on_screen)) == 10

        # B leaves: the room is gone from B's list, and from its members.
        bob.get_by_role("button", name="Leave room").click()
        expect(bob.locator("#create-status")).to_have_text("You left Picnic 🧺.")
        expect(bob.locator(f'button.room[data-room-id="{room["roomId"]}"]')).to_have_count(0)
        assert room_of(http, tokens["bob"], "Picnic 🧺") is None
        assert (room_of(http, tokens["carol"], "Picnic 🧺") or {}).get("participants") == ["alice", "carol"]
        steps.shot("left")

        # A logs out: back to the login form, the token forgotten.
        alice.get_by_role("button", name="Log out").click()
        expect(alice.get_by_role("button", name="Log in")).to_be_visible()
        assert alice.evaluate("localStorage.getItem('token')") is None
        steps.shot("logged-out")
        for page in (alice, bob):
            assert page.errors == [], page.errors  # type: ignore[attr-defined]


@BROWSER_TEST
def test_a_refused_send_shows_failed_and_its_retry_reuses_the_client_msg_id(browser: Browser) -> None:
    # One message per 4 s per connection, no burst beyond one: the second of two quick sends is refused.
    server = ServerProcess(["--message-rate", "0.25", "--message-burst", "1"])
    try:
        with Steps("failed-send-retry", server) as steps:
            page = new_page(browser, steps, "dora")
            sent: list[dict[str, Any]] = []

            def watch(ws: WebSocket) -> None:
                def frame(payload: str | bytes) -> None:
                    if isinstance(payload, str) and payload.startswith("42") and "send_message" in payload:
                        sent.append(json.loads(payload[payload.index("[") :])[1])

                ws.on("framesent", frame)

            page.on("websocket", watch)
            log_in(page, server.url, "dora", signup=True)
            page.get_by_label("Name", exact=True).fill("Notes")
            page.get_by_role("button", name="Create room").click()
            expect(page.locator("#room-title")).to_have_text("Notes")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "websocket")
            send(page, "first")
            send(page, "second")
            expect(rows(page, "first")).to_have_attribute("data-status", "sent")
            second = rows(page, "second")
            expect(second).to_have_attribute("data-status", "failed")
            expect(second).to_contain_text("Failed:")
            client_msg_id = second.get_attribute("data-client-msg-id")
            assert client_msg_id
            steps.shot("failed")

            # Retry, by keyboard, until the bucket has a token again (bounded; no timing assumed).
            deadline = time.monotonic() + 20
            while second.get_attribute("data-status") != "sent":
                assert time.monotonic() < deadline, "the retry was never accepted"
                if second.get_attribute("data-status") == "failed":
                    time.sleep(0.5)
                    second.get_by_role("button", name="Retry sending: second").focus()
                    page.keyboard.press("Enter")
                time.sleep(0.1)
            expect(second).to_have_attribute("data-client-msg-id", client_msg_id)
            steps.shot("retried")

            attempts = [frame for frame in sent if frame["content"] == "second"]
            assert len(attempts) >= 2
            assert {frame["clientMsgId"] for frame in attempts} == {client_msg_id}
            with httpx.Client(base_url=server.url, timeout=30) as http:
                token = http.post("/api/auth/login", json={"username": "dora", "password": "pw"}).json()["token"]
                room = room_of(http, token, "Notes")
                assert room is not None
                r = http.get(f"/api/chatrooms/{room['roomId']}/messages", headers={"Authorization": f"Bearer {token}"})
                assert [m["content"] for m in r.json()] == ["first", "second"]
            assert rows(page, "second").count() == 1
    finally:
        server.stop()


class SmallLoad:
    """A few python-socketio clients (the load test's client) sending in one room until stopped (bounded)."""

    def __init__(self, url: str, tokens: dict[str, str], room_id: str) -> None:
        self.url = url
        self.tokens = tokens
        self.room_id = room_id
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(name,), daemon=True) for name in tokens]

    def __enter__(self) -> SmallLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def _run(self, name: str) -> None:
        sio = socketio.Client(reconnection=False)
        sio.connect(f"{self.url}?token={self.tokens[name]}", wait_timeout=10)
        try:
            for i in range(3000):  # at most 3000 messages (60 s) each
                if self.stop.wait(0.02):
                    break
                sio.emit("send_message", {"roomId": self.room_id, "content": f"{name} {i}"})
        finally:
            sio.disconnect()


@BROWSER_TEST
def test_the_dashboard_moves_while_a_small_load_runs(
    browser: Browser, server: ServerProcess, http: httpx.Client
) -> None:
    with Steps("dashboard", server) as steps:
        tokens = users(http, "load0", "load1", "load2")
        r = http.post(
            "/api/chatrooms",
            json={"name": "load", "participants": ["load1", "load2"]},
            headers={"Authorization": f"Bearer {tokens['load0']}"},
        )
        page = new_page(browser, steps, "dashboard", width=1100, height=1000)
        page.goto(server.url + "/dashboard")
        expect(page.locator("#stream-state")).to_have_text("Live")
        steps.shot("idle")

        def figure(panel: str) -> float:
            value = page.locator(f"#{panel} .value").get_attribute("data-value")
            return float(value) if value else 0.0

        with SmallLoad(server.url, tokens, r.json()["roomId"]):
            poll(lambda: figure("accepted") > 0 and figure("deliveries") > 0, within=30, what="non-zero rates")
            poll(lambda: figure("connections") >= 3, within=15, what="the load's connections")
            # A few seconds of moving lines; for the README's picture, half a minute of them.
            time.sleep(30 if SCREENSHOTS else 3)
            steps.shot("under-load")
            keep_screenshot(page, "dashboard.png", full_page=True)
        text = page.locator("#panels").inner_text()
        assert "NaN" not in text and "undefined" not in text
        assert page.locator("#alerts li").first.inner_text() == "None"
        assert page.errors == []  # type: ignore[attr-defined]

"""A real Prometheus scrapes a real server under a small load, evaluates ``deploy/prometheus/alerts.yml``, and one
alert fires when its condition is provoked.

The server runs as its own process (``python -m server``, SQLite in tmp_path) with a per-connection message rate
limit of 5 msg/s (burst 5); two python-socketio clients send 20 msg/s each for 3 s, so most of their sends are
refused: ``minitalk_rate_limits_hit_total{kind="message"}`` climbs over several scrapes. Prometheus (Debian's
package, on a free 127.0.0.1 port, data in tmp_path) scrapes every second and evaluates the project's rule file
unchanged every second. Then the test asks Prometheus' HTTP API:

* the target is up and every rule evaluates (health "ok") — the rules agree with the metrics' types;
* ``minitalk_messages_accepted_total`` > 0 — the load went through and was scraped;
* ``MinitalkMessageRateLimitHit`` (``increase(...[5m]) > 0`` for 1m) reaches "firing", and no other alert fires:
  a healthy server under light load trips nothing else (the rules with a ``for:`` of a minute or less are the
  only ones that could fire in that time: server down, not ready, loop stalled, connection errors).

Timing: the alert is pending from the first evaluation that sees two scrapes with hits (~1 s after the load
starts) and firing 60 s later; the deadline allows 60 s more for a loaded machine. Everything is bounded by
``trio.fail_after`` and both processes are stopped in ``finally``.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.pg_fixtures import installed_or_skip
from tests.server_process import ServerProcess, start_server_process
from tests.sio_peer import Peer, make_room, make_users, wait_until
from tests.test_prometheus_rules import ALERTS, alert_blocks
from tools.pg_cluster import free_port
from tools.prometheus import PrometheusUnavailable, ensure_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PROVOKED = "MinitalkMessageRateLimitHit"
FIRING_WITHIN = 120.0  # seconds: the rule's `for: 1m` plus as much again for a loaded machine
MESSAGE_RATE = 5  # msg/s per connection, the server's limit here; the clients send 20/s
SENDS = 60  # per client, one every 0.05 s: 3 s of sending, 5 + 15 accepted, ~40 refused


def prometheus_config(server_port: int) -> str:
    """One scrape job named as the rules expect, everything at 1 s so the test takes seconds, not minutes."""
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: minitalk
    static_configs:
      - targets: ["127.0.0.1:{server_port}"]
"""


class Prometheus:
    def __init__(self, http: httpx.AsyncClient, log: Path) -> None:
        self.http = http
        self.log = log

    async def api(self, path: str, **params: str) -> Any:
        r = await self.http.get(f"/api/v1/{path}", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    async def wait_for(self, what: str, check: Callable[[], Any], *, within: float) -> Any:
        """Poll ``check`` (an API call that returns a truthy result when done) until it does, or fail saying what."""
        with trio.move_on_after(within):
            while not (result := await check()):  # noqa: ASYNC110 (another process's state)
                await trio.sleep(0.5)
            return result
        pytest.fail(f"Prometheus: {what} not within {within} s\n{self.log.read_text()[-3000:]}")


@asynccontextmanager
async def run_prometheus(nursery: trio.Nursery, tmp_path: Path, server_port: int) -> AsyncIterator[Prometheus]:
    prometheus, _ = installed_or_skip(ensure_prometheus, PrometheusUnavailable)
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(server_port))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        command = [
            str(prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        proc: trio.Process = await nursery.start(
            partial(trio.run_process, command, stdout=log_file, stderr=subprocess.STDOUT, check=False)
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            running = Prometheus(http, log)
            await running.wait_for("ready", partial(is_ready, http, proc), within=30)
            yield running
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


async def is_ready(http: httpx.AsyncClient, proc: trio.Process) -> bool:
    assert proc.returncode is None, "prometheus exited at start"
    try:
        return (await http.get("/-/ready")).status_code == 200
    except httpx.TransportError:
        return False


async def send_over_the_limit(server: ServerProcess, peers: list[Peer]) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, ["ann", "bob"])
        room = await make_room(http, tokens["ann"], ["bob"])
    for name, token in tokens.items():
        peer = Peer(name)
        peers.append(peer)
        await peer.connect(server.url, token, transports=["websocket"])

    async def send(peer: Peer) -> None:
        for i in range(SENDS):
            await peer.emit("send_message", {"roomId": room, "content": f"{peer.name}-{i}"})
            await trio.sleep(1 / (4 * MESSAGE_RATE))

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(send, peer)
    # The server said so too: both clients were refused (the `error` event) and got messages through.
    await wait_until(lambda: all(peer.received("error") and peer.received("message") for peer in peers))


async def test_a_real_prometheus_scrapes_the_server_evaluates_the_rules_and_one_fires(
    nursery: trio.Nursery, tmp_path: Path, peers: list[Peer]
) -> None:
    args = ["--database", f"sqlite:///{tmp_path / 'scrape.db'}", "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4"]
    args += ["--message-rate", str(MESSAGE_RATE), "--message-burst", str(MESSAGE_RATE)]
    server = await start_server_process(nursery, args)
    try:
        async with run_prometheus(nursery, tmp_path, server.port) as prometheus:
            with trio.fail_after(FIRING_WITHIN + 60):
                await check_scrape_and_rules(prometheus, server, peers)
    finally:
        if server.proc.returncode is None:
            await server.terminate()


async def check_scrape_and_rules(prometheus: Prometheus, server: ServerProcess, peers: list[Peer]) -> None:
    async def target_up() -> bool:
        targets = (await prometheus.api("targets"))["activeTargets"]
        return any(t["labels"]["job"] == "minitalk" and t["health"] == "up" for t in targets)

    await prometheus.wait_for("the server's target up", target_up, within=30)
    await send_over_the_limit(server, peers)

    async def accepted() -> float:
        result = (await prometheus.api("query", query="sum(minitalk_messages_accepted_total)"))["result"]
        return float(result[0]["value"][1]) if result else 0.0

    assert await prometheus.wait_for("accepted messages scraped", accepted, within=30) > 0

    async def rules_evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in (await prometheus.api("rules"))["groups"] for rule in group["rules"]]
        # Before its group's first evaluation a rule has no lastEvaluation yet: wait for all of them.
        done = all(rule["lastEvaluation"] != "0001-01-01T00:00:00Z" for rule in rules)
        return rules if done else []

    rules = await prometheus.wait_for("every rule evaluated once", rules_evaluated, within=30)
    assert sorted(rule["name"] for rule in rules) == sorted(alert_blocks()), "Prometheus loaded other rules"
    failing = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not failing, failing

    async def provoked_firing() -> list[dict[str, Any]]:
        alerts = (await prometheus.api("alerts"))["alerts"]
        firing = [a for a in alerts if a["state"] == "firing"]
        return firing if any(a["labels"]["alertname"] == PROVOKED for a in firing) else []

    firing = await prometheus.wait_for(f"{PROVOKED} firing", provoked_firing, within=FIRING_WITHIN)
    assert [a["labels"]["alertname"] for a in firing] == [PROVOKED], firing
    (alert,) = firing
    assert alert["labels"]["instance"] == f"127.0.0.1:{server.port}" and alert["labels"]["severity"] == "info"
    assert float(alert["value"]) > 0 and "rate limit hit" in alert["annotations"]["summary"], alert

"""The alert rules evaluated in the server: the same rules as deploy/prometheus/alerts.yml, PromQL's meaning."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from server.alerting import OUTSIDE_ONLY, RULES, Alerting
from server.metrics import Metrics, _HubFigures
from tests.conftest import make_config, start_server
from tests.raw_client import raw_client
from tests.sio_peer import make_room, make_users

RULE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"


def rule_file() -> dict[str, tuple[str, float, str]]:
    """Each alert of the rule file: (severity, for in seconds, expr)."""
    rules: dict[str, tuple[str, float, str]] = {}
    for block in RULE_FILE.read_text().split("- alert: ")[1:]:
        name = block.split("\n", 1)[0].strip()
        expr = block.split("expr:", 1)[1].split("\n        for:", 1)[0]
        amount, unit = re.search(r"\n\s+for: (\d+)([smh])\n", block).groups()  # type: ignore[union-attr]
        severity = re.search(r"severity: (\w+)", block).group(1)  # type: ignore[union-attr]
        rules[name] = (severity, int(amount) * {"s": 1, "m": 60, "h": 3600}[unit], " ".join(expr.split()))
    return rules


def test_the_server_evaluates_every_rule_of_the_rule_file_with_its_severity_for_and_threshold() -> None:
    in_file = rule_file()
    assert len(in_file) >= 18
    assert {rule.name for rule in RULES} == set(in_file) - set(OUTSIDE_ONLY)
    for rule in RULES:
        severity, for_s, expr = in_file[rule.name]
        assert (rule.severity, rule.for_s) == (severity, for_s), rule.name
        assert re.search(rf"(>|<|==|>=) {re.escape(f'{rule.threshold:g}')}\b", expr), (rule.name, expr)


def evaluate_every(alerting: Alerting, start: float, end: float, step: float = 15.0) -> None:
    t = start
    while t <= end:
        alerting.evaluate(t)
        t += step


def names(alerting: Alerting) -> set[str]:
    return {alert["name"] for alert in alerting.firing()}


# What the hub reports at each scrape: every key the metrics' hub collector reads (a new figure joins by itself).
HUB_FIGURES = ("websocket", "polling", *(key for _, _, key in _HubFigures._GAUGES), *_HubFigures._HELP)


def ready_metrics() -> Metrics:
    metrics = Metrics()
    metrics.ready.set(1)  # the server binds it to /ready; here it is set by hand
    return metrics


def test_a_rate_limit_hit_fires_after_its_for_and_clears_once_out_of_the_window() -> None:
    metrics = ready_metrics()
    alerting = Alerting(metrics.registry)
    alerting.evaluate(0)
    metrics.rate_limits_hit.labels("message").inc(3)
    evaluate_every(alerting, 15, 60)
    assert names(alerting) == set(), "pending for its 1 minute"
    evaluate_every(alerting, 75, 75)
    [alert] = alerting.firing()
    assert alert["name"] == "MinitalkMessageRateLimitHit" and alert["severity"] == "info"
    assert "3 (threshold 0)" in alert["summary"]
    evaluate_every(alerting, 90, 330)
    assert names(alerting) == set(), "no hit in the last 5 minutes"


def test_memory_near_the_limit_is_silent_without_a_limit() -> None:
    metrics = ready_metrics()
    alerting = Alerting(metrics.registry)
    metrics.memory_limit.set_function(lambda: 0.0)
    evaluate_every(alerting, 0, 900)
    assert "MinitalkMemoryNearLimit" not in names(alerting)
    metrics.memory_limit.set_function(lambda: 1024.0)  # any real RSS is far past 90% of 1 KiB
    evaluate_every(alerting, 915, 1200)
    assert "MinitalkMemoryNearLimit" not in names(alerting), "pending: 5 minutes"
    evaluate_every(alerting, 1215, 1215)
    assert "MinitalkMemoryNearLimit" in names(alerting)


def test_latency_rules_read_the_p99_of_the_window_as_histogram_quantile_does() -> None:
    metrics = ready_metrics()
    alerting = Alerting(metrics.registry)
    alerting.evaluate(0)
    for t in range(15, 316, 15):
        for _ in range(98):
            metrics.commit_to_write.observe(0.004)
        for _ in range(2):  # 2% of writes at 0.4 s: the p99 is in the (0.25, 0.5] bucket
            metrics.commit_to_write.observe(0.4)
        alerting.evaluate(t)
    assert "MinitalkDeliveryLatencyHigh" in names(alerting)
    for t in range(330, 961, 15):
        for _ in range(100):
            metrics.commit_to_write.observe(0.004)
        alerting.evaluate(t)
    assert "MinitalkDeliveryLatencyHigh" not in names(alerting), "the slow writes left the 5-minute window"


def test_not_ready_for_a_minute_fires_critical() -> None:
    metrics = ready_metrics()
    alerting = Alerting(metrics.registry)
    evaluate_every(alerting, 0, 30)
    metrics.ready.set(0)
    evaluate_every(alerting, 45, 90)
    assert "MinitalkNotReady" not in names(alerting)
    evaluate_every(alerting, 105, 105)
    assert [a["severity"] for a in alerting.firing() if a["name"] == "MinitalkNotReady"] == ["critical"]


@pytest.mark.parametrize(("connected_after", "fires"), [(100, True), (10, False)])
def test_a_throughput_drop_counts_only_while_the_clients_are_still_there(connected_after: int, fires: bool) -> None:
    metrics = ready_metrics()
    alerting = Alerting(metrics.registry)
    hub = dict.fromkeys(HUB_FIGURES, 0)  # what the hub would report at each scrape
    metrics.bind(lambda: hub, lambda: 0, 16384, lambda: True)
    hub["websocket"] = 100
    t = 0
    while t <= 3600:  # an hour at 20 msg/s
        metrics.messages_accepted.inc(20 * 15)
        alerting.evaluate(t)
        t += 15
    hub["websocket"] = connected_after
    while t <= 3600 + 1200:  # then 2 msg/s for 20 minutes
        metrics.messages_accepted.inc(2 * 15)
        alerting.evaluate(t)
        t += 15
    assert ("MinitalkThroughputDrop" in names(alerting)) is fires


async def test_the_dashboard_stream_carries_the_alerts_the_server_evaluates(
    nursery: trio.Nursery, db_path: Path
) -> None:
    server = await start_server(nursery, make_config(db_path, message_rate=1.0, message_burst=1))
    alerting = server.server.alerting  # its own task evaluated once at start: the baseline
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        tokens = await make_users(http, ["ann"])
        room = await make_room(http, tokens["ann"], [])
        async with raw_client(server.url, tokens["ann"]) as ann:
            for i in range(3):  # a burst of 1: the second and third are over the limit
                await ann.emit("send_message", {"roomId": room, "content": f"m{i}"}, ack_id=i)
            with trio.fail_after(10):
                while (await ann.next_event())[0] != "ack:2":
                    pass
        # The rule's minute, on the evaluator's clock rather than the test's.
        start = time.time()
        evaluate_every(alerting, start + 15, start + 90)
    # The first frame of the stream, read off the socket (an SSE response never ends by itself).
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /dashboard/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    with trio.fail_after(10):
        while b"\ndata: " not in received or not received.split(b"\ndata: ", 1)[1].count(b"\n"):
            received += await stream.receive_some(65536)
    await stream.aclose()
    frame = json.loads(received.split(b"\ndata: ", 1)[1].split(b"\n", 1)[0])
    assert [a["name"] for a in frame["alerts"]] == ["MinitalkMessageRateLimitHit"]
    await server.stop()

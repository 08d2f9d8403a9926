"""The alerting rules of ``deploy/prometheus/alerts.yml``, evaluated in the server for its dashboard.

An operator with Prometheus gets the alerts from Prometheus; a person who only runs ``make run`` has no
Prometheus, and the dashboard should still say "the commit p99 is over its threshold". So the server keeps a
short history of its own registry (one snapshot every ``EVAL_INTERVAL_S``, an hour and a little more: the
throughput rule compares with an hour ago) and evaluates each rule over it as PromQL would: ``increase`` and
``rate`` from the oldest snapshot inside the window, ``histogram_quantile`` over the buckets' increase, and a
rule fires once its condition has held for its ``for``.

The rule file is the source: :data:`RULES` names every alert of it with the same severity, ``for`` and
threshold, and ``tests/test_alerting.py`` checks the two against each other (a threshold changed in one and not
the other fails it). Two rules need an observer outside the process and are not evaluated here:
``MinitalkServerDown`` and ``MinitalkTargetMissing`` (a dashboard that is served says the server is up).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping

import msgspec
import trio
from prometheus_client.registry import CollectorRegistry

from server.dashboard import Labels, histogram_buckets, histogram_quantile, read_samples

EVAL_INTERVAL_S = 15.0  # Prometheus' usual evaluation interval
HISTORY_S = 3600.0 + 600.0  # the throughput rule's "an hour ago", with its own 5-minute window and slack
OUTSIDE_ONLY = ("MinitalkServerDown", "MinitalkTargetMissing")
_KEPT = ("minitalk_", "process_resident_memory_bytes")

Samples = dict[str, list[tuple[Labels, float]]]


class History:
    """Registry snapshots, oldest first, and the PromQL functions the rules use over them."""

    def __init__(self, keep_s: float = HISTORY_S) -> None:
        self._snapshots: deque[tuple[float, Samples]] = deque()
        self._keep_s = keep_s

    def add(self, t: float, samples: Samples) -> None:
        self._snapshots.append((t, samples))
        while self._snapshots and t - self._snapshots[0][0] > self._keep_s:
            self._snapshots.popleft()

    @property
    def now(self) -> float:
        return self._snapshots[-1][0] if self._snapshots else -math.inf

    def at(self, t: float) -> tuple[float, Samples] | None:
        """The newest snapshot taken at or before ``t``."""
        found = None
        for snapshot in self._snapshots:
            if snapshot[0] > t + 1e-9:
                break
            found = snapshot
        return found

    def value(self, name: str, *, offset: float = 0.0, **match: str) -> float | None:
        """A series summed over its labels (those in ``match`` must equal), ``offset`` seconds ago."""
        snapshot = self.at(self.now - offset)
        return None if snapshot is None else _total(snapshot[1], name, match)

    def increase(self, name: str, window: float, *, offset: float = 0.0, **match: str) -> float | None:
        """What a counter gained over the window (from the oldest snapshot inside it); None with one snapshot."""
        end = self.at(self.now - offset)
        if end is None:
            return None
        start = next((s for s in self._snapshots if s[0] >= end[0] - window - 1e-9), None)
        if start is None or start[0] >= end[0]:
            return None
        after, before = _total(end[1], name, match), _total(start[1], name, match)
        if after is None:
            return None
        return max(0.0, after - (before or 0.0))

    def rate(self, name: str, window: float, *, offset: float = 0.0, **match: str) -> float | None:
        gained = self.increase(name, window, offset=offset, **match)
        return None if gained is None else gained / window

    def quantile(self, q: float, name: str, window: float) -> float | None:
        """``histogram_quantile(q, rate(name_bucket[window]))``: None when nothing was observed in it."""
        end = self.at(self.now)
        start = next((s for s in self._snapshots if end is not None and s[0] >= end[0] - window - 1e-9), None)
        if end is None or start is None or start[0] >= end[0]:
            return None
        after, before = histogram_buckets(end[1], name) or {}, histogram_buckets(start[1], name) or {}
        return histogram_quantile(q, [(le, count - before.get(le, 0.0)) for le, count in after.items()])

    def min_over(self, name: str, window: float) -> float | None:
        values = [_total(s, name, {}) for t, s in self._snapshots if t >= self.now - window - 1e-9]
        present = [v for v in values if v is not None]
        return min(present) if present else None


def _total(samples: Samples, name: str, match: Mapping[str, str]) -> float | None:
    rows = [v for labels, v in samples.get(name, ()) if all(labels.get(k) == want for k, want in match.items())]
    return sum(rows) if rows else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


class Rule(msgspec.Struct, frozen=True):
    """One alert of the rule file: its condition is ``measure(history) > threshold`` (or a custom ``fires``)."""

    name: str
    severity: str
    for_s: float
    threshold: float
    measure: Callable[[History], float | None]
    what: str  # the summary's noun: "p99 delivery latency", "5xx share", ...
    fires: Callable[[float, History], bool] | None = None  # when the condition is more than "value > threshold"

    def holds(self, history: History) -> tuple[bool, float | None]:
        value = self.measure(history)
        if value is None:
            return False, None
        return (self.fires(value, history) if self.fires is not None else value > self.threshold), value


def _lagging_many(value: float, h: History) -> bool:
    return value >= 10 and value > 0.1 * (h.value("minitalk_connections") or 0.0)


def _throughput_dropped(value: float, h: History) -> bool:
    before = h.rate("minitalk_messages_accepted_total", 300, offset=3600)
    connections, connections_before = h.value("minitalk_connections"), h.value("minitalk_connections", offset=3600)
    return (
        before is not None
        and before >= 1
        and value < 0.5 * before
        and connections is not None
        and connections_before is not None
        and connections >= 0.5 * connections_before
    )


def _rejected_share(h: History) -> float | None:
    rejected = h.rate("minitalk_messages_rejected_total", 300)
    accepted = h.rate("minitalk_messages_accepted_total", 300)
    if rejected is None or accepted is None:
        return None
    return _ratio(rejected, rejected + accepted)


RULES: tuple[Rule, ...] = (
    Rule(
        "MinitalkNotReady",
        "critical",
        60,
        0,
        lambda h: h.value("minitalk_ready"),
        "readiness",
        fires=lambda v, h: v == 0,
    ),
    Rule(
        "MinitalkDeliveryLatencyHigh",
        "warning",
        300,
        0.25,
        lambda h: h.quantile(0.99, "minitalk_commit_to_write_seconds", 300),
        "p99 delivery (commit-to-write) latency",
    ),
    Rule(
        "MinitalkReceiveToCommitLatencyHigh",
        "warning",
        300,
        0.5,
        lambda h: h.quantile(0.99, "minitalk_receive_to_commit_seconds", 300),
        "p99 receive-to-commit latency",
    ),
    Rule(
        "MinitalkCommitLatencyHigh",
        "warning",
        300,
        0.25,
        lambda h: h.quantile(0.99, "minitalk_commit_seconds", 300),
        "p99 group commit latency",
    ),
    Rule(
        "MinitalkEventLoopLagHigh",
        "warning",
        600,
        0.05,
        lambda h: h.quantile(0.99, "minitalk_event_loop_lag_seconds", 300),
        "p99 event-loop lag",
    ),
    Rule(
        "MinitalkEventLoopStalled",
        "critical",
        60,
        0.5,
        lambda h: h.min_over("minitalk_event_loop_lag_latest_seconds", 120),
        "smallest event-loop lag in 2 minutes",
    ),
    Rule(
        "MinitalkIngestQueueNearFull",
        "warning",
        120,
        0.8,
        lambda h: _ratio(h.value("minitalk_ingest_queue_messages"), h.value("minitalk_ingest_queue_capacity_messages")),
        "ingest queue fill",
    ),
    Rule(
        "MinitalkManyLaggingMembers",
        "warning",
        600,
        10,
        lambda h: h.value("minitalk_lagging_members"),
        "lagging members",
        fires=_lagging_many,
    ),
    Rule(
        "MinitalkCatchupBacklogHigh",
        "warning",
        600,
        100000,
        lambda h: h.value("minitalk_catchup_backlog_messages"),
        "catch-up backlog (messages)",
    ),
    Rule(
        "MinitalkMemoryNearLimit",
        "warning",
        300,
        0.9,
        lambda h: _ratio(h.value("process_resident_memory_bytes"), h.value("minitalk_memory_limit_bytes")),
        "RSS share of the memory limit",
    ),
    Rule(
        "MinitalkHttpErrorRateHigh",
        "critical",
        300,
        0.05,
        lambda h: _ratio(
            sum(h.rate("minitalk_http_requests_total", 300, status=s) or 0.0 for s in _statuses(h, "5")),
            h.rate("minitalk_http_requests_total", 300),
        ),
        "5xx share of REST requests",
    ),
    Rule(
        "MinitalkConnectionErrors",
        "warning",
        60,
        0,
        lambda h: h.increase("minitalk_connection_errors_total", 600),
        "connection errors in 10 minutes",
    ),
    Rule(
        "MinitalkMessagesRejected",
        "warning",
        600,
        0.05,
        _rejected_share,
        "share of sends refused",
    ),
    Rule(
        "MinitalkMessageRateLimitHit",
        "info",
        60,
        0,
        lambda h: h.increase("minitalk_rate_limits_hit_total", 300, kind="message"),
        "messages over --message-rate in 5 minutes",
    ),
    Rule(
        "MinitalkConnectionsPerIpLimitHit",
        "warning",
        300,
        0,
        lambda h: h.increase("minitalk_rate_limits_hit_total", 300, kind="connections_per_ip"),
        "connections over --max-connections-per-ip in 5 minutes",
    ),
    Rule(
        "MinitalkThroughputDrop",
        "warning",
        600,
        0.5,
        lambda h: h.rate("minitalk_messages_accepted_total", 300),
        "accepted msgs/s (under half of an hour ago)",
        fires=_throughput_dropped,
    ),
)


def _statuses(h: History, first_digit: str) -> set[str]:
    """The status labels of the REST counter that start with ``first_digit`` (PromQL's ``status=~"5.."``)."""
    snapshot = h.at(h.now)
    rows = snapshot[1].get("minitalk_http_requests_total", ()) if snapshot is not None else ()
    return {labels.get("status", "") for labels, _ in rows if labels.get("status", "").startswith(first_digit)}


class Firing(msgspec.Struct, frozen=True):
    name: str
    severity: str
    summary: str
    since: float  # unix time the condition began to hold


class Alerting:
    """Evaluates :data:`RULES` every ``interval`` seconds over the registry's history; ``firing()`` for the page."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        rules: tuple[Rule, ...] = RULES,
        interval: float = EVAL_INTERVAL_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Only what the rules read: an hour of snapshots of the whole registry would be mostly GC counters.
        self._registry = registry
        self.rules = rules
        self.interval = interval
        self._clock = wall_clock
        self.history = History()
        self._pending: dict[str, float] = {}  # rule name -> when its condition began to hold
        self._firing: list[Firing] = []

    def evaluate(self, t: float | None = None) -> None:
        """Take a snapshot at ``t`` (default now) and update every rule's state."""
        now = self._clock() if t is None else t
        samples = {k: v for k, v in read_samples(self._registry).items() if k.startswith(_KEPT)}
        self.history.add(now, samples)
        firing = []
        for rule in self.rules:
            holds, value = rule.holds(self.history)
            if not holds:
                self._pending.pop(rule.name, None)
                continue
            since = self._pending.setdefault(rule.name, now)
            if now - since >= rule.for_s:
                assert value is not None
                text = f"{rule.what}: {value:.4g} (threshold {rule.threshold:g}) for {now - since:.0f} s"
                firing.append(Firing(rule.name, rule.severity, text, since))
        self._firing = firing

    def firing(self) -> list[dict[str, str]]:
        return [{"name": f.name, "severity": f.severity, "summary": f.summary} for f in self._firing]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.evaluate()
            await trio.sleep(self.interval)

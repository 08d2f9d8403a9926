"""Prometheus metrics for one server instance (its own registry, so tests can run several servers)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and nobody graphs them

# Buckets for the latencies of a message (commit, receive-to-commit, commit-to-write): from half a
# millisecond (an idle commit) to 2.5 s (a stalled disk), dense where the delivery targets are (5-100 ms).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# Where cgroups keep the memory limit: v2 (one file, "max" when unlimited), then v1 (a huge number).
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
# cgroup v1 says "no limit" with a number near 2**63 rounded to the page size; anything past this is none.
_NO_LIMIT = 2**62


def memory_limit_bytes(paths: tuple[Path, ...] = _CGROUP_LIMITS) -> float:
    """The process's cgroup memory limit in bytes; 0 when there is none (or it cannot be read)."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return 0.0
        try:
            value = int(text)
        except ValueError:
            continue
        return 0.0 if value >= _NO_LIMIT else float(value)
    return 0.0


# Event-loop lag is sampled this often: often enough to see a stall, cheap enough to never show up in a profile.
LAG_SAMPLE_S = 0.1


def build_info() -> dict[str, str]:
    """The package version and, when run from a git checkout, the commit (``unknown`` otherwise)."""
    try:
        version = importlib.metadata.version("minitalk-trio")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = "unknown"
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    with contextlib.suppress(OSError, IndexError):
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref.removeprefix("ref: ")).read_text().strip()
        commit = ref[:12]
    return {"version": version, "commit": commit}


# A disconnect's reason is free text (it names the packet or the limit); the metric's label is its kind, so
# the series stay few: (kind, words that mark it), first match wins.
_DISCONNECT_KINDS = (
    ("shutdown", ("shutting down",)),
    ("slow_consumer", ("slow consumer",)),
    ("timeout", ("timeout", "timed out", "ping")),
    ("internal_error", ("internal error",)),
    ("protocol_error", ("bad ", "malformed", "attachment", "protocol", "frame", "invalid")),
    ("client_closed", ("client", "closed", "went away", "transport close")),
)


def disconnect_kind(reason: str) -> str:
    text = reason.lower()
    for kind, words in _DISCONNECT_KINDS:
        if any(word in text for word in words):
            return kind
    return "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's CPU, memory and descriptors, the collector's work, and what is running: what an
        # operator's dashboards of the original expect beside the server's own figures.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        Info("minitalk_build", "the running server: version and commit", registry=r).info(build_info())
        self.messages_accepted = Counter("minitalk_messages_accepted", "send_message events accepted", registry=r)
        self.messages_rejected = Counter(
            "minitalk_messages_rejected", "send_message events refused with an error", registry=r
        )
        # One family for every limit a client can run into, so one alert watches them all.
        self.rate_limits_hit = Counter(
            "minitalk_rate_limits_hit",
            "requests refused by a configured limit, by kind: message (--message-rate), connections_per_ip"
            " (--max-connections-per-ip)",
            ["kind"],
            registry=r,
        )
        self.disconnects = Counter(
            "minitalk_disconnects", "Engine.IO sessions ended, by kind of reason", ["reason"], registry=r
        )
        self.auth_failures = Counter(
            "minitalk_auth_failures",
            "refused logins and Socket.IO CONNECTs without a valid token",
            ["kind"],
            registry=r,
        )
        self.http_requests = Counter(
            "minitalk_http_requests",
            "REST requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.slow_consumer_disconnects = Counter(
            "minitalk_slow_consumer_disconnects", "members cut off for falling behind", registry=r
        )
        self.batch_size = Histogram(
            "minitalk_batch_size_messages",
            "messages per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "minitalk_commit_seconds",
            "time to commit one batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # A message's time in the server, in two halves. Observed once per batch, not per message (a
        # histogram takes a lock per observation): receive-to-commit for the batch's oldest message, so the
        # worst wait in each batch; commit-to-write once the flusher round that writes the batch has ended.
        self.receive_to_commit = Histogram(
            "minitalk_receive_to_commit_seconds",
            "from a batch's oldest send_message being accepted to the batch's commit (one observation per batch)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_to_write = Histogram(
            "minitalk_commit_to_write_seconds",
            "from a batch's commit to its frames written to every live websocket member (durable mode; members"
            " catching up from the log and polling members are not counted; one observation per batch)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.connection_errors = Counter(
            "minitalk_connection_errors",
            "connections closed because handling them raised an unexpected exception (each one logged)",
            registry=r,
        )
        self.ingest_queue = Gauge(
            "minitalk_ingest_queue_messages", "messages accepted and not yet committed", registry=r
        )
        self.ingest_queue_capacity = Gauge(
            "minitalk_ingest_queue_capacity_messages",
            "the ingest queue's bound (--ingest-queue): senders wait while it is full",
            registry=r,
        )
        self.memory_limit = Gauge(
            "minitalk_memory_limit_bytes",
            "the memory limit of the process's cgroup (a container's or a systemd unit's), 0 when there is none",
            registry=r,
        )
        self.memory_limit.set_function(memory_limit_bytes)
        self.ready = Gauge(
            "minitalk_ready", "1 while /ready answers 200 (storage committing, not shutting down), else 0", registry=r
        )
        self.loop_lag = Gauge("minitalk_event_loop_lag_latest_seconds", "the latest event-loop lag sample", registry=r)
        self.loop_lag_hist = Histogram(
            "minitalk_event_loop_lag_seconds",
            "event-loop lag samples, one every 0.1 s",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        # Connection hardening: the front door and the body guard count what they refuse or cut.
        self.http_body_timeouts = Counter(
            "minitalk_http_body_timeouts", "requests whose body did not arrive within --body-timeout", registry=r
        )
        self.accept_errors = Counter(
            "minitalk_accept_errors",
            "accept() failures for lack of descriptors or memory, by errno",
            ["errno"],
            registry=r,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def observe_received(self, oldest_accepted_ms: int) -> None:
        """A batch was committed; its oldest message was accepted at ``oldest_accepted_ms`` (wall clock, ms)."""
        self.receive_to_commit.observe(max(0.0, time.time() - oldest_accepted_ms / 1000))

    def bind(
        self,
        hub_stats: Callable[[], dict[str, int]],
        queue_depth: Callable[[], int],
        queue_capacity: int,
        ready: Callable[[], bool],
    ) -> None:
        """Figures read at scrape time, so the hot path never updates them."""
        self.ingest_queue_capacity.set(queue_capacity)
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)
        self.ingest_queue.set_function(queue_depth)
        self.registry.register(_HubFigures(hub_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self) -> None:
        while True:
            expected = trio.current_time() + LAG_SAMPLE_S
            await trio.sleep(LAG_SAMPLE_S)
            lag = max(0.0, trio.current_time() - expected)
            self.loop_lag.set(lag)
            self.loop_lag_hist.observe(lag)


class _HubFigures(Collector):
    """The hub's figures, from one ``hub_stats()`` per scrape (it walks every session): its counters, kept as
    plain integers on the hot path (a prometheus Counter takes a lock per inc), and its gauges."""

    _GAUGES = (  # (name, help, key in hub_stats)
        ("minitalk_outbox_bytes", "bytes waiting in websocket outboxes", "outbox_bytes"),
        ("minitalk_largest_outbox_bytes", "the longest queue of one client, in bytes", "largest_outbox_bytes"),
        ("minitalk_lagging_members", "members catching up from the log instead of live pushes", "lagging"),
        (
            "minitalk_catchup_backlog_messages",
            "messages the members catching up from the log have still to read",
            "catchup_backlog",
        ),
    )
    _HELP = {
        "messages_broadcast": "messages broadcast to a room",
        "deliveries": "message packets queued to members (live pushes and catch-up from the log)",
        "deliveries_caught_up": "message packets a lagging member read from the log instead of a live push",
        "lag_episodes": "times a member fell behind its rooms and was switched to catch-up (never cut off)",
        "ws_deflate": "websocket messages deflated for permessage-deflate: once per broadcast, whatever the room's"
        " size (per window size a member agreed on; in practice one)",
        "ws_compressed_frames": "websocket frames queued with RSV1 set (compressed), one per member that got one",
    }

    def __init__(self, hub_stats: Callable[[], dict[str, int]]) -> None:
        self._hub_stats = hub_stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._hub_stats()
        connections = GaugeMetricFamily(
            "minitalk_connections", "Open Engine.IO sessions by transport", labels=["transport"]
        )
        for transport in ("websocket", "polling"):
            connections.add_metric([transport], stats[transport])
        yield connections
        for name, text, key in self._GAUGES:
            yield GaugeMetricFamily(name, text, value=stats[key])
        for name, text in self._HELP.items():
            yield CounterMetricFamily(f"minitalk_{name}", text, value=stats[name])

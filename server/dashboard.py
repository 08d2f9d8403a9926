"""The live dashboard's numbers: ``GET /dashboard/stream``, Server-Sent Events read from the metrics registry.

The page at ``/dashboard`` draws what this sends; it computes nothing itself. Every frame is read from the
same prometheus registry that ``/metrics`` renders (no second set of counters on the hot path): gauges as
they are, counters as rates over the last interval, histograms as p50/p99 over the last few seconds (the
bucket counts' increase, interpolated as PromQL's ``histogram_quantile`` does). A metric the registry does
not have (renamed, not registered in this mode) is ``null`` in the frame and a dash on the page: the stream
never fails for a missing name.

Alerts: each frame carries ``alerts``, the list the ``alerts`` callable returns (each ``{name, severity,
summary}``): the server passes ``Alerting.firing`` (``server/alerting.py``), the rules of
``deploy/prometheus/alerts.yml`` evaluated in the process.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import msgspec
import trio
from prometheus_client.registry import CollectorRegistry
from quart import Blueprint, Response

# One frame a second; quantiles over the last five. Each stream ends after its lifetime and the browser's
# EventSource reconnects by itself (``retry``): no request is open for ever, and a proxy's timeouts do not bite.
INTERVAL_S = 1.0
QUANTILE_WINDOW_S = 5.0
STREAM_LIFETIME_S = 300.0
RETRY_MS = 1000

Labels = Mapping[str, str]
Alerts = Callable[[], list[dict[str, str]]]


def no_alerts() -> list[dict[str, str]]:
    """No alerting rules (a dashboard without an evaluator, in tests)."""
    return []


def read_samples(registry: CollectorRegistry) -> dict[str, list[tuple[Labels, float]]]:
    """Every sample in the registry by sample name (``x_total``, ``x_bucket``, ...), as ``/metrics`` shows it."""
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative ``(upper bound, count)`` buckets, interpolated linearly inside a bucket as
    PromQL does; ``None`` with no observations. In the ``+Inf`` bucket: the highest finite bound."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class Sampler:
    """Reads the registry into frames; keeps what the rates and quantiles of the next frame need."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        alerts: Alerts = no_alerts,
        window_s: float = QUANTILE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.alerts = alerts
        self.window_s = window_s
        self.clock = clock
        self._previous: tuple[float, dict[str, list[tuple[Labels, float]]]] | None = None
        self._history: deque[tuple[float, dict[str, list[tuple[Labels, float]]]]] = deque()

    def frame(self) -> dict[str, Any]:
        now = self.clock()
        samples = read_samples(self.registry)
        previous = self._previous
        self._previous = (now, samples)
        self._history.append((now, samples))
        while len(self._history) > 1 and now - self._history[0][0] > self.window_s:
            self._history.popleft()
        oldest = self._history[0][1] if len(self._history) > 1 else None

        def total(name: str, source: Mapping[str, list[tuple[Labels, float]]] = samples) -> float | None:
            rows = source.get(name)
            return None if rows is None else sum(value for _, value in rows)

        def rate(name: str) -> float | None:
            now_value = total(name)
            if previous is None or now_value is None:
                return None
            before = total(name, previous[1])
            elapsed = now - previous[0]
            if before is None or elapsed <= 0:
                return None
            return max(0.0, now_value - before) / elapsed  # a counter never falls; a reset reads as 0

        def by_label(name: str, label: str) -> dict[str, float] | None:
            rows = samples.get(name)
            return None if rows is None else {labels.get(label, ""): value for labels, value in rows}

        def quantiles(name: str) -> tuple[float | None, float | None]:
            now_buckets = histogram_buckets(samples, name)
            if now_buckets is None:
                return None, None
            before = histogram_buckets(oldest, name) if oldest is not None else None
            window = [(le, count - (before or {}).get(le, 0.0)) for le, count in now_buckets.items()]
            return histogram_quantile(0.5, window), histogram_quantile(0.99, window)

        cpu = rate("process_cpu_seconds_total")
        commit = quantiles("minitalk_commit_seconds")
        to_commit = quantiles("minitalk_receive_to_commit_seconds")
        to_write = quantiles("minitalk_commit_to_write_seconds")
        loop = quantiles("minitalk_event_loop_lag_seconds")
        return {
            "t": time.time(),
            "ready": total("minitalk_ready"),
            "connections": by_label("minitalk_connections", "transport"),
            "accepted_per_s": rate("minitalk_messages_accepted_total"),
            "deliveries_per_s": rate("minitalk_deliveries_total"),
            "rate_limits_per_s": rate("minitalk_rate_limits_hit_total"),
            "rate_limits_total": total("minitalk_rate_limits_hit_total"),
            "commit_p50_s": commit[0],
            "commit_p99_s": commit[1],
            "receive_to_commit_p50_s": to_commit[0],
            "receive_to_commit_p99_s": to_commit[1],
            "delivery_p50_s": to_write[0],
            "delivery_p99_s": to_write[1],
            "loop_lag_s": total("minitalk_event_loop_lag_latest_seconds"),
            "loop_lag_p99_s": loop[1],
            "outbox_bytes": total("minitalk_outbox_bytes"),
            "largest_outbox_bytes": total("minitalk_largest_outbox_bytes"),
            "catchup_backlog_messages": total("minitalk_catchup_backlog_messages"),
            "lagging_members": total("minitalk_lagging_members"),
            "ingest_queue_messages": total("minitalk_ingest_queue_messages"),
            "ingest_queue_capacity_messages": total("minitalk_ingest_queue_capacity_messages"),
            "batch_size_p50_messages": quantiles("minitalk_batch_size_messages")[0],
            "cpu_percent": None if cpu is None else cpu * 100,
            "rss_bytes": total("process_resident_memory_bytes"),
            "memory_limit_bytes": total("minitalk_memory_limit_bytes"),
            "alerts": self.alerts(),
        }


def histogram_buckets(samples: Mapping[str, list[tuple[Labels, float]]], name: str) -> dict[float, float] | None:
    """A histogram's cumulative buckets (summed over its other labels) by upper bound, or None if absent."""
    rows = samples.get(f"{name}_bucket")
    if rows is None:
        return None
    buckets: dict[float, float] = {}
    for labels, value in rows:
        le = float(labels.get("le", "+Inf"))
        buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def dashboard_routes(
    registry: CollectorRegistry,
    stopping: trio.Event,
    *,
    alerts: Alerts = no_alerts,
    interval_s: float = INTERVAL_S,
    lifetime_s: float = STREAM_LIFETIME_S,
) -> Blueprint:
    """``GET /dashboard/stream``: a frame every ``interval_s`` until ``lifetime_s`` or the server stops."""
    bp = Blueprint("dashboard", __name__)

    @bp.get("/dashboard/stream")
    async def stream() -> Response:
        sampler = Sampler(registry, alerts=alerts)

        async def events() -> AsyncIterator[bytes]:
            yield f"retry: {RETRY_MS}\n\n".encode()
            deadline = trio.current_time() + lifetime_s
            while not stopping.is_set() and trio.current_time() < deadline:
                yield b"data: " + msgspec.json.encode(sampler.frame()) + b"\n\n"
                with trio.move_on_after(interval_s):
                    await stopping.wait()  # a shutdown ends the stream at once, not at the next tick

        response = Response(events(), content_type="text/event-stream; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each frame on as it comes
        response.timeout = lifetime_s + 2 * interval_s  # quart's default (60 s) would cut the stream short
        return response

    return bp

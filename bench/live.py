"""The live view (rich): per second, sent and acked rate, deliveries, p99, deliveries outstanding, server CPU
and (ours) event-loop lag."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.scenarios import Scenario


class _Second:
    __slots__ = ("acked", "cpu", "delivered", "lag", "outstanding", "p99", "sent")

    def __init__(self) -> None:
        self.sent = self.acked = self.delivered = 0
        self.p99 = float("nan")
        self.outstanding = 0.0
        self.cpu = float("nan")
        self.lag = float("nan")


class LiveView:
    """Fed by the runner: worker ticks (per worker, per second) and server samples (once a second).

    "outstanding" is deliveries owed (acked messages x the scenario's mean fan-out) minus deliveries seen so far:
    it stays near one second's worth while the server keeps up, grows when it falls behind, and whatever is still
    there after the drain is loss, which the final accounting then counts exactly.
    """

    def __init__(self, scenario: Scenario, target_name: str) -> None:
        self._title = f"{scenario.name} on {target_name}"
        self._seconds: dict[int, _Second] = {}
        self._owed = 0.0
        self._delivered = 0
        self._fanout = scenario.expected_deliveries_per_s / scenario.offered_rate if scenario.offered_rate else 0.0
        self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def tick(self, payload: Any) -> None:
        _, second, sent, acked, delivered, p99 = payload
        row = self._seconds.setdefault(second, _Second())
        row.sent += sent
        row.acked += acked
        row.delivered += delivered
        if not math.isnan(p99):
            row.p99 = p99 if math.isnan(row.p99) else max(row.p99, p99)
        self._owed += acked * self._fanout
        self._delivered += delivered
        row.outstanding = max(0.0, self._owed - self._delivered)
        self._live.update(self._table())

    def server_sample(self, sample: dict[str, float]) -> None:
        second = max(1, math.ceil(sample["t"]))
        row = self._seconds.setdefault(second, _Second())
        row.cpu = sample["cpu_percent"]
        row.lag = sample.get("loop_lag_ms", float("nan"))  # only our server has /metrics
        self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=self._title)
        for column in (
            "second",
            "sent/s",
            "acked/s",
            "deliveries/s",
            "p99 ms",
            "outstanding",
            "server CPU %",
            "loop lag ms",
        ):
            table.add_column(column, justify="right")
        for second in sorted(self._seconds)[-10:]:
            row = self._seconds[second]
            table.add_row(
                str(second),
                f"{row.sent:,}",
                f"{row.acked:,}",
                f"{row.delivered:,}",
                "-" if math.isnan(row.p99) else f"{row.p99:,.1f}",
                f"{row.outstanding:,.0f}",
                "-" if math.isnan(row.cpu) else f"{row.cpu:,.0f}",
                "-" if math.isnan(row.lag) else f"{row.lag:,.1f}",
            )
        return table

"""The live view (rich): offered and acked rate, deliveries, p99, deliveries outstanding, server CPU, per second."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.scenarios import Scenario


class LiveView:
    """Fed by the runner: worker ticks (per worker, per second) and server samples."""

    def __init__(self, scenario: Scenario, target_name: str) -> None:
        self._scenario = scenario
        self._title = f"{scenario.name} on {target_name}"
        self._seconds: dict[int, list[float]] = {}  # second → [sent, acked, delivered, worst p99]
        self._cpu = float("nan")
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
        row = self._seconds.setdefault(second, [0, 0, 0, 0.0])
        row[0] += sent
        row[1] += acked
        row[2] += delivered
        if not math.isnan(p99):
            row[3] = max(row[3], p99)
        self._owed += acked * self._fanout
        self._delivered += delivered
        self._live.update(self._table())

    def server_sample(self, sample: dict[str, float]) -> None:
        self._cpu = sample["cpu_percent"]
        self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=self._title)
        for column in ("second", "sent/s", "acked/s", "deliveries/s", "p99 ms", "outstanding", "server CPU %"):
            table.add_column(column, justify="right")
        outstanding = max(0.0, self._owed - self._delivered)  # in flight now; what never arrives stays here
        for second in sorted(self._seconds)[-10:]:
            sent, acked, delivered, p99 = self._seconds[second]
            table.add_row(
                str(second),
                f"{sent:,.0f}",
                f"{acked:,.0f}",
                f"{delivered:,.0f}",
                f"{p99:,.1f}",
                f"{outstanding:,.0f}",
                f"{self._cpu:,.0f}",
            )
        return table

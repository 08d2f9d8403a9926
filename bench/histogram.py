"""Latency histograms (HdrHistogram, microseconds), mergeable across worker processes."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000  # two minutes: anything slower is a failure, not a latency
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


class Histogram:
    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, value_us: int) -> None:
        self._h.record_value(min(max(value_us, LOWEST_US), HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def encode(self) -> str:
        return self._h.encode().decode() if self.count else ""

    @classmethod
    def decode(cls, encoded: str) -> Histogram:
        histogram = cls()
        if encoded:
            histogram._h.add(HdrHistogram.decode(encoded.encode()))
        return histogram

    def add(self, other: Histogram) -> None:
        if other.count:
            self._h.add(other._h)

    def percentile_ms(self, p: float) -> float:
        return self._h.get_value_at_percentile(p) / 1000 if self.count else float("nan")

    def max_ms(self) -> float:
        return self._h.get_max_value() / 1000 if self.count else float("nan")

    def summary_ms(self) -> dict[str, float]:
        out = {f"p{p:g}": self.percentile_ms(p) for p in PERCENTILES}
        out["max"] = self.max_ms()
        return out

"""Latency histograms (HdrHistogram, microseconds), mergeable across worker processes."""

from __future__ import annotations

from array import array

import numpy as np
from hdrh.histogram import HdrHistogram

from bench.result import Percentiles

LOWEST_US = 1
HIGHEST_US = 120_000_000  # two minutes: anything slower is a failure, not a latency
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)  # Percentiles' fields, max aside


class Histogram:
    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, value_us: int) -> None:
        self._h.record_value(min(max(value_us, LOWEST_US), HIGHEST_US))

    @classmethod
    def of(cls, values: array[int]) -> Histogram:
        """A histogram of ``values`` (µs), as if each were recorded, for a small fraction of the cost.

        hdrh's ``record_value`` is Python (about 2.5 µs a value, most of the load generator's time per delivery
        when it recorded each one). Here the values are rounded down to the resolution the histogram keeps at
        their size (numpy, at C speed), and each distinct one is recorded once with its count: a second of
        latencies spread over 1-100 ms has a few thousand of them, however many deliveries it had.
        """
        histogram = cls()
        if not values:
            return histogram
        h = histogram._h
        v = np.clip(np.frombuffer(values, dtype=np.int64), LOWEST_US, HIGHEST_US)
        # The histogram keeps sub_bucket_half_count_magnitude + 1 significant bits (11 for 3 digits): a value of
        # bit length b (frexp's exponent) lands in the same counter as itself rounded down to a multiple of
        # 2**(b - 11), or of 2**unit_magnitude below that (hdrh's _get_bucket_index and _get_sub_bucket_index).
        bits = np.frexp(v.astype(np.float64))[1]
        shift = np.maximum(bits - (h.sub_bucket_half_count_magnitude + 1), h.unit_magnitude)
        distinct, counts = np.unique((v >> shift) << shift, return_counts=True)
        for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            h.record_value(value, count)
        return histogram

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

    def summary_ms(self) -> Percentiles:
        p50, p90, p95, p99, p99_9 = (self.percentile_ms(p) for p in PERCENTILES)
        return Percentiles(p50=p50, p90=p90, p95=p95, p99=p99, p99_9=p99_9, max=self.max_ms())

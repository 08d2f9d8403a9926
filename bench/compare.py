"""``python -m bench compare OLD.json NEW.json``: side by side, and a non-zero exit on a regression.

A metric regresses when it moves the wrong way by more than the noise threshold (default 10%, ``--threshold``):
repeated runs of the same scenario on this 2-core machine vary by a few percent in throughput and by more in tail
latency, so smaller moves are not called regressions. Loss and duplication have no threshold: any message lost
or duplicated where there was none before is a regression.

Two stress records (``run stress``, ``peers --stress``) compare each target's maximum sustainable msgs/s and
deliveries/s with the same threshold; a ramp step is x1.5, so a lost step always shows. A target missing from
NEW is a regression too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.result import Result, StressRecord

# (label, how to read it, higher is better?)
METRICS: list[tuple[str, Callable[[Result], float], bool]] = [
    ("acked msgs/s", lambda r: r.throughput["acked_msgs_per_s"], True),
    ("deliveries/s", lambda r: r.throughput["deliveries_per_s"], True),
    ("delivery p50 ms", lambda r: r.delivery_latency_ms["p50"], False),
    ("delivery p99 ms", lambda r: r.delivery_latency_ms["p99"], False),
    ("ack p99 ms", lambda r: r.ack_latency_ms["p99"], False),
    ("lost", lambda r: float(r.counts["lost"]), False),
    ("duplicated", lambda r: float(r.counts["duplicated"]), False),
]
EXACT = {"lost", "duplicated"}


def compare(old: Result, new: Result, threshold: float = 0.10) -> tuple[str, list[str]]:
    """The table, and the names of the metrics that regressed."""
    lines = [f"{'metric':<18}{'old':>14}{'new':>14}{'change':>10}", "-" * 56]
    regressed = []
    for label, get, higher_is_better in METRICS:
        a, b = float(get(old)), float(get(new))
        change = (b - a) / a if a and not math.isnan(a) and not math.isnan(b) else 0.0
        if label in EXACT:
            bad = b > a
        else:
            worse = -change if higher_is_better else change
            bad = worse > threshold
        if bad:
            regressed.append(label)
        mark = "  REGRESSED" if bad else ""
        lines.append(f"{label:<18}{a:>14,.2f}{b:>14,.2f}{change:>+10.1%}{mark}")
    return "\n".join(lines), regressed


STRESS_METRICS = ("max_sustainable_msgs_per_s", "max_sustainable_deliveries_per_s")


def compare_stress(old: StressRecord, new: StressRecord, threshold: float = 0.10) -> tuple[str, list[str]]:
    """Per target, the maximum sustainable rates; the (target: metric) names that regressed."""
    lines = [f"{'target':<26}{'metric':<34}{'old':>14}{'new':>14}{'change':>10}", "-" * 98]
    regressed = []
    after = {str(r["target"]): r for r in new.ramps}
    for ramp in old.ramps:
        name = str(ramp["target"])
        if name not in after:
            regressed.append(f"{name}: missing")
            lines.append(f"{name:<26}missing from NEW  REGRESSED")
            continue
        for metric in STRESS_METRICS:
            a, b = float(ramp[metric]), float(after[name][metric])
            change = (b - a) / a if a else 0.0
            bad = -change > threshold or (a > 0 and b == 0)
            if bad:
                regressed.append(f"{name}: {metric}")
            mark = "  REGRESSED" if bad else ""
            lines.append(f"{name:<26}{metric:<34}{a:>14,.0f}{b:>14,.0f}{change:>+10.1%}{mark}")
    return "\n".join(lines), regressed

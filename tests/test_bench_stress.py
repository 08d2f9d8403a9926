"""The stress ramp's arithmetic and verdicts (the ramp itself is a series of ordinary runs)."""

from __future__ import annotations

import math

import pytest

from bench.result import Result
from bench.scenarios import by_name
from bench.stress import START_DELIVERIES_PER_S, first_rate, scaled, sustainable


@pytest.mark.parametrize("shape", ["quick", "fanout", "multipub"])
def test_scaling_keeps_the_shape_and_sets_the_rate(shape: str) -> None:
    base = by_name(shape, duration=5)
    step = scaled(base, 1234.0, 8)
    assert step.rooms == base.rooms and step.users == base.users and step.duration == 8
    assert math.isclose(step.offered_rate, 1234.0)
    shares = [s.rate / base.offered_rate for s in base.sends]
    assert [s.rate / step.offered_rate for s in step.sends] == pytest.approx(shares)


def test_first_step_asks_the_same_deliveries_whatever_the_room_sizes() -> None:
    for shape in ("quick", "fanout"):
        base = by_name(shape, duration=5)
        step = scaled(base, first_rate(base), 8)
        assert step.expected_deliveries_per_s == pytest.approx(START_DELIVERIES_PER_S)
    assert first_rate(by_name("fanout", duration=5)) == pytest.approx(5.0)  # 1000 members


def _result(*, lost: int = 0, duplicated: int = 0, acked: float = 1000, p99: float = 10, bound: bool = False) -> Result:
    return Result(
        scenario="stress",
        description="",
        parameters={},
        server={"name": "x"},
        git_commit="",
        machine={},
        started_at="",
        counts={"lost": lost, "duplicated": duplicated},
        throughput={"offered_msgs_per_s": 1000.0, "acked_msgs_per_s": acked},
        delivery_latency_ms={"p99": p99},
        ack_latency_ms={},
        timeline=[],
        server_resources=[],
        server_metrics={},
        client_cpu_percent=[],
        client_bound=bound,
    )


def test_a_step_is_sustainable_only_if_nothing_is_lost_it_keeps_up_and_p99_holds() -> None:
    assert sustainable(_result(), 100) == (True, "ok")
    assert sustainable(_result(lost=1), 100) == (False, "1 lost, 0 duplicated")
    assert sustainable(_result(duplicated=2), 100) == (False, "0 lost, 2 duplicated")
    assert sustainable(_result(acked=960), 100) == (False, "fell behind the offered rate")
    assert sustainable(_result(p99=101), 100) == (False, "p99 101 ms > 100 ms")
    assert sustainable(_result(p99=float("nan")), 100)[0] is False  # nothing delivered at all
    assert sustainable(_result(bound=True), 100) == (False, "client-bound")

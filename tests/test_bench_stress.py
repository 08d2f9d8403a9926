"""The stress ramp's arithmetic and verdicts (the ramp itself is a series of ordinary runs)."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from bench.report import _ratio, headroom, steps_table, stress_table
from bench.result import Counts, Percentiles, Ramp, Result, StressRecord, Throughput, load_any
from bench.scenarios import Scenario, by_name
from bench.stress import (
    MAX_BISECTIONS,
    MAX_STEPS_DOWN,
    START_DELIVERIES_PER_S,
    cpu_at_max,
    first_rate,
    ramp,
    ramp_limit,
    scaled,
    step_limit,
    sustainable,
)
from bench.target import Target
from tests.bench_records_fake import fake_step
from tests.server_process import ROOT


@pytest.mark.parametrize("shape", ["quick", "fanout", "multipub", "ingest"])
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


def _result(
    *,
    lost: int = 0,
    duplicated: int = 0,
    acked: float = 1000,
    p99: float = 10,
    bound: bool = False,
    server_cpu: float = 50,
) -> Result:
    return Result(
        scenario="stress",
        description="",
        parameters={},
        server={"name": "x"},
        git_commit="",
        machine={},
        started_at="",
        counts=Counts(
            offered=8000,
            sent=8000,
            acked=round(acked * 8),
            rejected=0,
            expected_deliveries=48000,
            delivered=48000 - lost,
            lost=lost,
            duplicated=duplicated,
            out_of_order=0,
        ),
        throughput=Throughput(
            offered_msgs_per_s=1000.0, sent_msgs_per_s=1000.0, acked_msgs_per_s=acked, deliveries_per_s=6000.0
        ),
        delivery_latency_ms=Percentiles(p50=p99 / 2, p99=p99),
        ack_latency_ms=Percentiles(),
        timeline=[],
        server_resources=[{"t": 1.0, "cpu_percent": server_cpu, "rss_mb": 50.0}],
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
    # A saturated client only adds latency: passing anyway is a pass; failing blames the client, not the server.
    assert sustainable(_result(bound=True), 100) == (True, "ok (client-bound)")
    assert sustainable(_result(bound=True, p99=500), 100) == (False, "client-bound")
    assert sustainable(_result(bound=True, acked=900), 100) == (False, "client-bound")
    assert sustainable(_result(bound=True, lost=1), 100) == (False, "1 lost, 0 duplicated")
    # Both saturated: the client cannot take the blame alone, so the step fails as the server's.
    both = _result(bound=True, p99=500, server_cpu=99)
    assert sustainable(both, 100) == (False, "p99 500 ms > 100 ms (server and client saturated)")
    assert sustainable(_result(bound=True, server_cpu=99), 100) == (True, "ok (client-bound)")


class _FakeServer:
    """Stands in for the runs: a server that holds p99 under the bound up to ``limit`` msg/s."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.rates: list[float] = []

    def run(self, scenario: Scenario, target: object) -> Result:
        rate = scenario.offered_rate
        self.rates.append(rate)
        result = _result(p99=50 if rate <= self.limit else 500)
        result.throughput.acked_msgs_per_s = rate
        result.throughput.deliveries_per_s = scenario.expected_deliveries_per_s
        return result


def test_the_ramp_climbs_until_a_step_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServer(limit=3000)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    target = Target("t", "http://127.0.0.1:1", pid=None, settings={})
    out = ramp(target, by_name("quick", duration=1), start=1000, narrow_to=0)
    assert fake.rates == pytest.approx([1000, 1500, 2250, 3375])
    assert out.max_sustainable_msgs_per_s == pytest.approx(2250)  # the last step that passed
    per_message = by_name("quick").expected_deliveries_per_s / by_name("quick").offered_rate
    assert out.max_sustainable_deliveries_per_s == pytest.approx(per_message * 2250)
    assert out.limited_by.startswith("3,375 msg/s: p99 500 ms")
    assert out.bracket == [2250, 3375] and out.bisections == 0


def test_after_the_first_failing_step_the_ramp_bisects_to_within_ten_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServer(limit=3000)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    out = ramp(Target("t", "http://127.0.0.1:1", pid=None, settings={}), by_name("quick", duration=1), start=1000)
    # x1.5 up to the failing 3,375, then the geometric middle of the bracket three times: 2,756 passes,
    # 3,050 fails, 2,899 passes; 3,050 / 2,899 = 1.052, within 10%.
    middles = [(2250 * 3375) ** 0.5]
    middles.append((middles[0] * 3375) ** 0.5)
    middles.append((middles[0] * middles[1]) ** 0.5)
    assert fake.rates == pytest.approx([1000, 1500, 2250, 3375, *middles])
    assert [s.ok for s in out.steps[3:]] == [False, True, False, True]
    assert out.bisections == 3 and out.bracket == pytest.approx([middles[2], middles[1]], abs=0.01)
    assert out.bracket[1] / out.bracket[0] <= 1.10 and out.bracket[0] <= fake.limit < out.bracket[1]
    assert out.max_sustainable_msgs_per_s == pytest.approx(middles[2])
    assert out.limited_by.startswith("3,050 msg/s: p99 500 ms") and out.limit == "server"
    assert "| 2,899 to 3,050 msg/s (+5%) |" in stress_table([out])


def test_the_bisection_is_bounded_whatever_the_bracket_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServer(limit=3000)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    target = Target("t", "http://127.0.0.1:1", pid=None, settings={})
    out = ramp(target, by_name("quick", duration=1), start=1000, narrow_to=1e-9)
    assert out.bisections == MAX_BISECTIONS and len(fake.rates) == 4 + MAX_BISECTIONS


def test_when_the_first_step_fails_the_ramp_looks_below_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServer(limit=500)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    out = ramp(Target("t", "http://127.0.0.1:1", pid=None, settings={}), by_name("quick", duration=1), start=1000)
    assert fake.rates[:3] == pytest.approx([1000, 1000 / 1.5, 1000 / 1.5**2])
    assert [s.ok for s in out.steps][:3] == [False, False, True]
    # ... then narrows 444-667 from below: 544 fails, 492 passes, 517 fails.
    assert [s.ok for s in out.steps[3:]] == [False, True, False]
    assert out.limited_by.startswith("517 msg/s") and out.bracket[0] <= 500 < out.bracket[1]


def test_a_peer_that_never_passes_is_reported_as_sustaining_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServer(limit=0)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    out = ramp(Target("t", "http://127.0.0.1:1", pid=None, settings={}), by_name("quick", duration=1), start=1000)
    assert len(fake.rates) == 1 + MAX_STEPS_DOWN
    assert out.max_sustainable_deliveries_per_s == 0.0


def test_a_ramp_that_runs_out_of_steps_reports_a_lower_bound(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _FakeServer(limit=1e12)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    out = ramp(Target("t", "http://127.0.0.1:1", pid=None, settings={}), by_name("quick", duration=1), max_steps=3)
    assert len(fake.rates) == 3 and out.limited_by == "stopped after 3 steps"
    assert out.lower_bound and not out.client_bound
    assert f"| ≥ {fake.rates[-1]:,.0f} |" in stress_table([out])
    # Records written before the field: the loader infers it from what limited the ramp.
    legacy = {k: v for k, v in msgspec.to_builtins(out).items() if k != "lower_bound"}
    failed = {**legacy, "limited_by": "3,375 msg/s: p99 500 ms > 100 ms"}
    path = tmp_path / "legacy.json"
    path.write_bytes(msgspec.json.encode([legacy, failed]))
    loaded = load_any(path)
    assert isinstance(loaded, StressRecord) and [r.lower_bound for r in loaded.ramps] == [True, False]


def test_offered_counts_what_the_schedule_sends_also_at_fractional_rates() -> None:
    assert by_name("quick").scheduled_messages() == 59 * 1510  # 59 streams, floor(30 s x 2970/59 msg/s) each
    assert scaled(by_name("fanout", duration=5), 0.66, 8).scheduled_messages() == 5  # floor(8 x 0.66)


def test_a_ramp_ended_by_the_client_reports_a_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServer(limit=10_000)
    real_run = fake.run

    def client_saturates_at_2250(scenario: Scenario, target: object) -> Result:
        result = real_run(scenario, target)
        if scenario.offered_rate > 2000:  # saturated and, past that, too slow to keep the p99
            result = msgspec.structs.replace(result, client_bound=True)
            result.delivery_latency_ms.p99 = 500
        elif scenario.offered_rate > 1200:  # saturated, but still within the bound
            result = msgspec.structs.replace(result, client_bound=True)
        return result

    monkeypatch.setattr("bench.stress.runner.run", client_saturates_at_2250)
    target = Target("t", "http://127.0.0.1:1", pid=None, settings={})
    out = ramp(target, by_name("quick", duration=1), start=1000)
    assert [step.why for step in out.steps][:3] == ["ok", "ok (client-bound)", "client-bound"]
    # Narrowed between 1,500 and 2,250 too: the client's limit, so the maximum stays a lower bound.
    assert [step.why for step in out.steps][3:] == ["ok (client-bound)", "client-bound", "ok (client-bound)"]
    assert out.client_bound and out.limited_by == "2,033 msg/s: client-bound" and out.limit == "client"
    table = stress_table([out])
    assert "| ≥ 1,933 |" in table and "the server's maximum is at least this" in table
    peer = msgspec.structs.replace(out, client_bound=False, lower_bound=False)

    def msgs(r: Ramp) -> float:
        return r.max_sustainable_msgs_per_s

    assert _ratio(out, peer, msgs) == "≥ 1.0x"
    assert _ratio(peer, out, msgs) == "≤ 1.0x"
    assert _ratio(peer, peer, msgs) == "1.0x"


def test_each_step_and_each_ramp_says_whose_limit_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    assert step_limit(fake_step(ok=True, why="ok")) == "none"
    assert step_limit(fake_step(ok=True, why="ok (client-bound)")) == "none (client saturated)"
    assert step_limit(fake_step(ok=False, why="client-bound")) == "client"
    assert (
        step_limit(fake_step(ok=False, why="p99 500 ms > 100 ms (server and client saturated)")) == "server and client"
    )
    assert step_limit(fake_step(ok=False, why="1 lost, 0 duplicated")) == "server"
    fake = _FakeServer(limit=2000)
    monkeypatch.setattr("bench.stress.runner.run", fake.run)
    out = ramp(Target("t", "http://127.0.0.1:1", pid=None, settings={}), by_name("quick", duration=1), start=1000)
    assert [s.limit for s in out.steps][:3] == ["none", "none", "server"]
    assert out.limit == "server" and out.server_cpu_at_max == 50
    table = stress_table([out])
    assert "| server / client CPU % at max | whose limit |" in table and "| 50 / 0 | server |" in table
    [failed] = [line for line in steps_table([out]).splitlines() if line.startswith("| t | 2,250 |")]
    assert failed.endswith("| p99 500 ms > 100 ms | server |")


def test_records_written_before_the_limit_was_recorded_still_say_whose_it_was() -> None:
    first = load_any(ROOT / "docs" / "bench" / "20261123T092331-peers-quick-stress.json")
    second = load_any(ROOT / "docs" / "bench" / "20261123T104248-peers-quick-stress.json")
    assert isinstance(first, StressRecord) and isinstance(second, StressRecord)
    node_first, node_second = first.ramps[3], second.ramps[3]
    assert node_first.target == node_second.target == "node-socket.io"
    assert node_first.limit == ""  # written before the field
    # The first run's older rule called Node's failing step client-bound; the second saw both cores saturated.
    assert (ramp_limit(node_first), ramp_limit(node_second)) == ("client", "server and client")
    assert cpu_at_max(node_second) == "66 / 100" and ramp_limit(second.ramps[0]) == "server"
    assert cpu_at_max(msgspec.structs.replace(node_second, steps=[])) == "n/a"
    assert ramp_limit(msgspec.structs.replace(node_second, steps=[fake_step(ok=True, why="ok")])).startswith("none")


def test_the_ingest_shape_puts_each_sender_alone_in_its_room() -> None:
    """What bench.quickload's ingest measured, as a scenario of the one load generator."""
    shape = by_name("ingest", rate=6400, duration=2)
    assert shape.rooms == [[u] for u in range(32)] and shape.users == 32
    assert {(s.user, s.room) for s in shape.sends} == {(u, u) for u in range(32)}
    assert shape.expected_deliveries_per_s == pytest.approx(6400)  # each message to its sender only
    assert first_rate(shape) == pytest.approx(START_DELIVERIES_PER_S)


def test_a_run_report_says_whose_limit_its_numbers_could_be() -> None:
    spare = _result(server_cpu=40)
    spare.client_cpu_percent = [35.0, 62.5]
    assert headroom(spare).endswith(
        "load generator 62.50% (busiest worker): the load generator had 38% of its core to spare"
    )
    bound = msgspec.structs.replace(spare, client_bound=True, client_cpu_percent=[97.0])
    assert "client-bound: the load generator's core was the limit" in headroom(bound)
    assert "was not measured" in headroom(_result())

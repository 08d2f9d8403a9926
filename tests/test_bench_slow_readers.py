"""The slow-readers scenario: a short real run against our server (fields and accounting, never timings), and the
arithmetic behind it (per-member settling, catch-up, lagging, commit quantiles) on made-up data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as cli
from bench import worker
from bench.accounting import StreamTracker
from bench.scenarios import SlowReading, by_name
from bench.slowread import LAGGING_US, MemberWatch, SlowReadStats
from bench.slowreport import settle_slow
from bench.target import histogram_quantile
from tests.server_process import ROOT

MEMBER_FIELDS = {
    "member",
    "delivery_rate",
    "expected",
    "delivered",
    "unacked",
    "lost",
    "lost_in_gaps",
    "lost_at_tail",
    "duplicated",
    "out_of_order",
    "disconnects",
    "disconnected_at_s",
    "catch_up_s",
    "lagging_s",
    "max_latency_ms",
    "bytes_read",
}


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slow")
    # 2 s slow at 20% of their rooms' rate, 2 s more at full speed, then the scenario's 10 s drain: ~20 s in all.
    args = ["run", "slow-readers", "--slow-for", "2", "--duration", "4", "--read-fraction", "0.2", "--no-live"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [result] = out.glob("*-slow-readers-durable.json")
    return result


def _members(data: dict[str, Any]) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = data["slow_members"]
    return members


def test_every_slow_member_is_reported_with_every_field(slow_run: Path) -> None:
    data = json.loads(slow_run.read_text())
    members = _members(data)
    assert [m["member"] for m in members] == by_name("slow-readers").slow  # 8 of the quick preset's 26 members
    assert all(set(m) == MEMBER_FIELDS for m in members)
    phases = data["slow_phases"]
    assert phases["slow_for_s"] == 2 and phases["read_fraction"] == 0.2
    assert phases["slow_members"] == 8 and phases["other_members"] == 18
    assert set(phases["rss_mb"]) == {"start", "max_slow", "max_after", "end"}
    assert set(phases["commit_p99_ms"]) == {"slow", "after", "run"}  # ours has /metrics
    assert phases["verdict"]
    assert any("commit_p99_ms" in s for s in data["server_resources"])
    assert any(row["slow_p99_ms"] is not None for row in data["timeline"])  # null: no slow delivery that second


def test_the_accounting_adds_up(slow_run: Path) -> None:
    data = json.loads(slow_run.read_text())
    for m in _members(data):
        assert m["lost"] == m["lost_in_gaps"] + m["lost_at_tail"]
        # each delivery is an expected message that arrived, a duplicate, or one whose ack never came back
        assert m["delivered"] - m["duplicated"] - m["unacked"] == m["expected"] - m["lost"]
        assert m["duplicated"] == m["out_of_order"] == 0  # a server keeps each stream in order, once
        assert m["bytes_read"] > 0 and m["lagging_s"] >= 0
        assert m["catch_up_s"] is None or m["catch_up_s"] >= 0  # None: NaN, never caught up
        assert (m["disconnects"] == 0) == (m["disconnected_at_s"] is None)  # NaN is written as null
    phases, counts = data["slow_phases"], data["counts"]
    slow, rest = phases["slow_totals"], phases["other_totals"]
    for key in ("expected", "lost", "duplicated", "out_of_order"):
        assert slow[key] == sum(m[key] for m in _members(data))
        assert slow[key] + rest[key] == counts[key if key != "expected" else "expected_deliveries"]
    assert slow["delivered"] + rest["delivered"] == counts["delivered"]


def test_the_report_has_the_slow_readers_section_and_plot(slow_run: Path) -> None:
    report = slow_run.with_suffix(".md").read_text()
    assert "## Slow readers" in report and "| slow members: disconnects |" in report
    assert "| member | its rooms' msgs/s |" in report and "| commit p99 ms: slow phase |" in report
    [plot] = (slow_run.parent / "img").glob("*-slow.png")
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_slow_readers_are_a_third_of_the_room_members_and_read_by_websocket() -> None:
    scenario = by_name("slow-readers", polling_share=1.0)
    in_rooms = {u for members in scenario.rooms for u in members}
    assert set(scenario.slow) <= in_rooms and len(scenario.slow) == len(in_rooms) // 3
    assert not set(scenario.slow) & scenario.polling_members()
    assert scenario.duration == 60 and round(scenario.offered_rate) == 2970  # 30 s slow + 30 s at full speed
    assert by_name("slow-readers", slow=SlowReading(share=0.0)).slow == []


def test_lagging_is_the_time_before_reads_that_were_more_than_a_second_late() -> None:
    watch = MemberWatch(3, begin_ns=0, slow_for=10, allowed_rate=100)
    watch.observe(500_000_000, 100, LAGGING_US // 2)  # 0.5 s late: not lagging
    watch.observe(2_000_000_000, 100, 2 * LAGGING_US)  # 2 s late: the 1.5 s before this read count
    watch.observe(2_100_000_000, 100, 3 * LAGGING_US)
    watch.observe(3_000_000_000, 0, 0)  # a read with no message: not lagging
    assert watch.lagging_ns == 1_600_000_000 and watch.bytes_read == 300 and watch.max_latency_us == 3 * LAGGING_US


def _report(member: int, seen: dict[tuple[int, int], list[int]], *, last_old: float) -> worker.WorkerReport:
    summaries = []
    for (sender, room), ns in seen.items():
        tracker = StreamTracker()
        for n in ns:
            tracker.see(n)
        summaries.append((member, sender, room, tracker.summary()))
    return worker.WorkerReport(
        0, 1, 0, 0, 0, 0, [], summaries, [], "", "", [], 0.0, 1.0, [],
        slow=[SlowReadStats(member, 10, 1000, 5.0, 6000.0, last_old)],
    )  # fmt: skip


def test_settling_splits_holes_from_tail_and_times_the_catch_up() -> None:
    scenario = by_name("slow-readers", slow=SlowReading(share=1.0, slow_for=1.0))
    room = scenario.rooms[0]
    member, sender = room[1], room[0]
    rate = next(s.rate for s in scenario.sends if (s.user, s.room) == (sender, 0))
    count = 100  # accepted messages of (sender, room 0); message n is scheduled at n / rate s (rate ~50/s)
    old = math.ceil(rate)  # scheduled within the first second
    accepted = {(sender, 0): count}
    caught_up = _report(member, {(sender, 0): list(range(count))}, last_old=1.25)
    members, _ = settle_slow(scenario, [caught_up], **_inputs(accepted, caught_up))
    [m] = [m for m in members if m.member == member]
    assert (m.lost, m.catch_up_s) == (0, 0.25)
    holes = _report(member, {(sender, 0): [n for n in range(count) if n != 3]}, last_old=1.25)
    [m] = [m for m in settle_slow(scenario, [holes], **_inputs(accepted, holes))[0] if m.member == member]
    assert (m.lost_in_gaps, m.lost_at_tail, math.isnan(m.catch_up_s)) == (1, 0, True)  # message 3 was old
    cut = _report(member, {(sender, 0): list(range(old + 5))}, last_old=1.0)
    [m] = [m for m in settle_slow(scenario, [cut], **_inputs(accepted, cut))[0] if m.member == member]
    assert (m.lost_in_gaps, m.lost_at_tail, m.catch_up_s) == (0, count - old - 5, 0.0)  # the old ones all came


def _inputs(accepted: dict[tuple[int, int], int], report: worker.WorkerReport) -> dict[str, Any]:
    seen = {(m, s, r): summary for m, s, r, summary in report.seen}
    return {"accepted": accepted, "written": accepted, "seen": seen, "samples": [], "commit": ({}, [], {})}


def test_commit_quantiles_interpolate_inside_the_bucket_as_prometheus_does() -> None:
    def cumulative(counts: dict[str, float]) -> dict[str, float]:
        return {f'minitalk_commit_seconds_bucket{{le="{le}"}}': n for le, n in counts.items()}

    before = cumulative({"0.005": 10, "0.01": 10, "+Inf": 10})
    after = cumulative({"0.005": 60, "0.01": 110, "+Inf": 110})  # 50 at or under 5 ms, 50 in (5, 10] ms
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.005)
    assert histogram_quantile(0.99, before, after) == pytest.approx(0.005 + 0.005 * 49 / 50)
    assert math.isnan(histogram_quantile(0.99, after, after))  # nothing observed
    assert histogram_quantile(0.99, {}, cumulative({"0.005": 1, "+Inf": 100})) == 0.005  # in +Inf: the last bound


def test_the_slow_reading_flags_are_refused_for_other_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "quick", "--slow-for", "5"])
    assert exc.value.code == 2 and "slow-readers" in capsys.readouterr().err

"""``python -m bench compare`` on repeated runs (issue 14, item 6): medians, a threshold from the measured spread,
loss and duplication exact, a weak verdict for single runs, and exit codes 0 / 1 / 2. Synthetic results with
realistic noise; the exit codes through the real command in a subprocess. No wall clock is asserted."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as cli
from bench.compare import FLOORS, MIN_RUNS, WEAK_FLOORS, Row, compare, other_cpu, repeats_table, spread
from bench.result import Counts, Percentiles, Repeats, Result, StressRecord, Throughput, load_any, reference_ms
from bench.target import server_environment
from tests.server_process import ROOT

COMMITTED_RAMPS = ROOT / "docs" / "bench" / "20261123T092331-peers-quick-stress.json"


def result(
    *,
    acked: float = 2967.7,
    deliveries: float = 18761.9,
    p50: float = 8.5,
    p99: float = 15.8,
    ack_p99: float | None = None,
    lost: int = 0,
    duplicated: int = 0,
    scenario: str = "quick",
    environment: dict[str, str] | None = None,
) -> Result:
    """A quick-preset result with these figures (the rest as a real 10 s run writes them)."""
    return Result(
        scenario=scenario,
        description="load test preset 'quick'",
        parameters={"offered_msgs_per_s": 2970.0, "duration_s": 10.0},
        server={"name": "minitalk-trio (durable)", "environment": environment or {}},
        git_commit="abc1234",
        machine={"cores": 2, "cpu_model": "test"},
        started_at="2026-12-04T23:15:20+00:00",
        counts=Counts(
            offered=29700,
            sent=29677,
            acked=29677,
            rejected=0,
            expected_deliveries=187619,
            delivered=187619 - lost + duplicated,
            lost=lost,
            duplicated=duplicated,
            out_of_order=0,
        ),
        throughput=Throughput(
            offered_msgs_per_s=2970.0, sent_msgs_per_s=2967.7, acked_msgs_per_s=acked, deliveries_per_s=deliveries
        ),
        delivery_latency_ms=Percentiles(p50=p50, p99=p99),
        ack_latency_ms=Percentiles(p50=p50, p99=p99 if ack_p99 is None else ack_p99),
        timeline=[],
        server_resources=[],
        server_metrics={},
        client_cpu_percent=[],
        client_bound=False,
    )


def noisy_runs(rng: random.Random, n: int, *, slow: float = 1.0, tail: float = 1.0) -> list[Result]:
    """n runs of the same code on a noisy machine: rates within +-1.5%, p50 +-15%, p99 anywhere in x0.5-x1.5 of
    its typical value (two quick runs have differed by +87%). ``slow`` divides the rates, ``tail`` multiplies p99."""
    runs = []
    for _ in range(n):
        p99 = 15.8 * rng.uniform(0.5, 1.5) * tail
        runs.append(
            result(
                acked=2967.7 * rng.uniform(0.985, 1.015) / slow,
                deliveries=18761.9 * rng.uniform(0.985, 1.015) / slow,
                p50=8.5 * rng.uniform(0.85, 1.15) * tail,
                p99=p99,
                ack_p99=p99 * rng.uniform(0.95, 1.05),
            )
        )
    return runs


# The shape of what this machine produced: p99 of five same-code runs from 10.9 to 23.2 ms.
OLD_P99 = [12.1, 15.8, 23.2, 10.9, 14.0]
NEW_P99 = [19.5, 11.2, 16.4, 22.8, 13.1]


def test_two_sets_of_same_code_repeats_with_a_p99_varying_by_half_are_no_change() -> None:
    old = [result(p99=v) for v in OLD_P99]
    new = [result(p99=v) for v in NEW_P99]
    comparison = compare(old, new)
    assert comparison.verdict == "no change" and comparison.regressed == [] and not comparison.weak
    p99 = next(r for r in comparison.rows if r.label == "delivery p99 ms")
    assert p99.old == 14.0 and p99.new == 16.4  # medians
    assert p99.change == pytest.approx(16.4 / 14.0 - 1)  # +17%: inside the spread the runs showed
    assert p99.old_spread == pytest.approx((15.8 - 12.1) / 14.0)  # interquartile range / median
    assert p99.threshold == pytest.approx(2 * (19.5 - 13.1) / 16.4)  # k x the wider of the two sides' spreads
    assert "verdict: no change" in comparison.report()


def test_same_code_repeats_are_almost_never_called_regressed() -> None:
    """200 pairs of noisy same-code sides (seeded): the spread-derived threshold absorbs the noise. This noise is
    harsher than the docstring's table (five metrics at once, p99 anywhere in x0.5-x1.5), hence the margin."""
    for runs, at_most in ((5, 8), (7, 5)):  # 4% and 2.5% of the pairs (7 and 4 with this seed)
        rng = random.Random(14)
        called = [compare(noisy_runs(rng, runs), noisy_runs(rng, runs)).regressed for _ in range(200)]
        assert sum(1 for names in called if names) <= at_most, (runs, called)


def test_a_deliberately_slowed_side_regresses_beyond_the_spread() -> None:
    rng = random.Random(6)
    old = noisy_runs(rng, 5)
    slowed = noisy_runs(rng, 5, slow=1 / 0.6, tail=3.0)  # throughput -40%, latencies x3
    comparison = compare(old, slowed)
    assert comparison.verdict == "regressed"
    assert set(comparison.regressed) == {
        "acked msgs/s",
        "deliveries/s",
        "delivery p50 ms",
        "delivery p99 ms",
        "ack p99 ms",
    }
    assert comparison.verdict_line().startswith("verdict: regressed: acked msgs/s, deliveries/s")
    # And back: the fast side is an improvement, not a regression.
    back = compare(slowed, old)
    assert back.verdict == "improved" and back.regressed == []


def p50_row(old: list[float], new: list[float]) -> Row:
    comparison = compare([result(p50=v) for v in old], [result(p50=v) for v in new])
    return next(r for r in comparison.rows if r.label == "delivery p50 ms")


def test_a_move_past_the_floor_but_inside_the_spread_is_no_change() -> None:
    noisy = [8.0, 8.3, 8.5, 9.5, 11.0]  # spread (9.5 - 8.3) / 8.5 = 14%
    row = p50_row(noisy, [9.6, 9.8, 10.0, 10.1, 10.3])  # +17.6%: past the 10% floor, inside 2 x the spread
    assert row.verdict == "no change" and row.threshold == pytest.approx(2 * 1.2 / 8.5)
    row = p50_row([8.4, 8.45, 8.5, 8.55, 8.6], [9.9, 9.95, 10.0, 10.05, 10.1])
    assert row.verdict == "regressed" and row.threshold == FLOORS["median"]  # tight runs: the floor decides
    # One wild run of five does not widen the threshold: the interquartile range leaves it out.
    row = p50_row([8.4, 8.45, 8.5, 8.55, 60.0], [9.9, 9.95, 10.0, 10.05, 10.1])
    assert row.verdict == "regressed" and row.threshold == FLOORS["median"]


@pytest.mark.parametrize("field", ["lost", "duplicated"])
def test_any_loss_or_duplication_regresses_whatever_the_noise(field: str) -> None:
    old = [result() for _ in range(5)]
    bad = result(lost=1) if field == "lost" else result(duplicated=1)
    new = [result(), result(), bad, result(), result()]  # one message in one run of five
    comparison = compare(old, new)
    assert comparison.regressed == [field]
    row = next(r for r in comparison.rows if r.label == field)
    assert (row.old, row.new, row.change) == (0, 1, 1)
    # The worst run of each side is compared: as much loss as before is no change, less is an improvement.
    assert compare(new, new).regressed == [] and compare(new, old).improved == [field]


def test_one_run_a_side_still_works_but_the_verdict_says_it_is_weak() -> None:
    old, new = result(p99=15.8), result(p99=15.8 * 1.87)  # +87% p99 between two quick runs of one commit
    comparison = compare(old, new)
    assert comparison.weak and comparison.verdict == "no change"
    assert {r.label: r.threshold for r in comparison.rows}["delivery p99 ms"] == WEAK_FLOORS["tail"]
    line = comparison.verdict_line()
    assert line.startswith("verdict: no change (weak: 1 run vs 1 run") and "--repeat 5" in line
    assert compare(old, result(p99=15.8 * 3)).regressed == ["delivery p99 ms", "ack p99 ms"]
    assert compare(old, result(deliveries=18761.9 * 0.6)).regressed == ["deliveries/s"]
    # A side with runs lends its spread to a single run on the other side; still weak.
    mixed = compare([result(p99=v) for v in (8.0, 16.0, 32.0)], result(p99=36.0))
    assert mixed.weak and mixed.regressed == []  # +125%: past the 100% floor, inside 2 x (half the range / 16)
    assert {r.label: r.threshold for r in mixed.rows}["delivery p99 ms"] == pytest.approx(2 * 12 / 16)


def test_a_threshold_flag_sets_one_floor_for_every_metric() -> None:
    old, new = result(), result(acked=2967.7 * 0.97)
    assert compare(old, new).regressed == []
    assert compare(old, new, floor=0.01).regressed == ["acked msgs/s"]
    assert "the floor is 1% (--threshold)" in compare(old, new, floor=0.01).verdict_line()


def test_the_spread_is_the_relative_interquartile_range() -> None:
    assert spread([10.0, 11.0, 12.0, 13.0, 100.0]) == pytest.approx((13 - 11) / 12)  # the 2nd to the 4th of 5
    assert spread([10.0, 20.0, 15.0]) == pytest.approx(5 / 15)  # 2-3 runs: half the min-max range
    assert spread([5.0]) != spread([5.0])  # NaN: one run has no spread
    assert spread([0.0, 0.0]) == 0.0
    assert spread([float("nan"), 4.0, 6.0]) == pytest.approx(1 / 5)  # a run without a p99 does not count


def test_the_repeats_table_shows_each_run_the_median_and_the_spread() -> None:
    table = repeats_table([result(p99=v) for v in OLD_P99])
    lines = table.splitlines()
    assert lines[0].startswith("| run | acked msgs/s | deliveries/s |") and len(lines) == 2 + 5 + 2
    assert lines[0].endswith("| other processes, % of a core |") and lines[2].endswith("| unknown |")
    assert "| **median** |" in lines[-2] and "14.00" in lines[-2] and "0 (worst)" in lines[-2]
    assert f"{(15.8 - 12.1) / 14.0:.1%}" in lines[-1]


def test_a_record_of_repeats_round_trips(tmp_path: Path) -> None:
    record = Repeats(command="python -m bench run quick --repeat 3", runs=[result(p99=v) for v in (10, 12, 14)])
    path = record.save(tmp_path / "r.json")
    assert json.loads(path.read_text())["kind"] == "repeats"
    loaded = load_any(path)
    assert isinstance(loaded, Repeats) and [r.delivery_latency_ms.p99 for r in loaded.runs] == [10, 12, 14]


def test_the_server_environment_a_run_inherits_is_recorded_secrets_hidden() -> None:
    environ = {"BATCH_LINGER": "0.05", "JWT_SECRET": "s3cret", "PORT": "9", "HOME": "/root"}
    assert server_environment(["--port", "0"], environ) == {"BATCH_LINGER": "0.05", "JWT_SECRET": "***"}


# --- the command: exit 0 (no regression), 1 (regression), 2 (usage error) ---


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def save_repeats(path: Path, runs: list[Result]) -> Path:
    return Repeats(command="test", git_commit="abc1234", runs=runs).save(path)


def figures(p99s: list[float], *, slow: float = 1.0, lost: int = 0) -> list[Result]:
    """Runs with these p99s, the rates within +-1% of a quick run's (divided by ``slow``), p50 about half p99."""
    rates = [1.0, 0.99, 1.01, 0.995, 1.005]
    return [
        result(acked=2967.7 * f / slow, deliveries=18761.9 * f / slow, p50=p99 / 1.9, p99=p99, lost=lost if i else 0)
        for i, (p99, f) in enumerate(zip(p99s, rates, strict=True))
    ]


@pytest.fixture
def sides(tmp_path: Path) -> dict[str, Path]:
    return {
        "old": save_repeats(tmp_path / "old.json", figures(OLD_P99)),
        "same": save_repeats(tmp_path / "same.json", figures(NEW_P99)),
        # throughput -40%, every latency x3: far beyond what the runs of either side spread over
        "slowed": save_repeats(tmp_path / "slowed.json", figures([3 * v for v in NEW_P99], slow=1 / 0.6)),
        "lossy": save_repeats(tmp_path / "lossy.json", figures(NEW_P99, lost=2)),
    }


def test_the_command_says_no_change_for_same_code_and_exits_0(sides: dict[str, Path]) -> None:
    done = bench("compare", str(sides["old"]), str(sides["same"]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("old: 5 runs, new: 5 runs")
    assert done.stdout.rstrip().splitlines()[-1] == "verdict: no change"


def test_the_command_says_regressed_for_a_slowed_side_and_exits_1(sides: dict[str, Path]) -> None:
    done = bench("compare", str(sides["old"]), str(sides["slowed"]))
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    assert rows["delivery p99 ms"].endswith("regressed") and rows["acked msgs/s"].endswith("regressed")
    assert rows["lost"].endswith("no change")
    assert done.stdout.rstrip().splitlines()[-1].startswith("verdict: regressed: acked msgs/s")


def test_the_command_exits_1_on_loss(sides: dict[str, Path]) -> None:
    done = bench("compare", str(sides["old"]), str(sides["lossy"]))
    assert done.returncode == 1 and done.stdout.rstrip().endswith("verdict: regressed: lost")


def test_a_side_may_be_several_files_or_a_directory(sides: dict[str, Path], tmp_path: Path) -> None:
    singles = []
    same = load_any(sides["same"])
    assert isinstance(same, Repeats)
    for i, run in enumerate(same.runs):
        singles.append(run.save(tmp_path / "singles", f"run{i}"))
    done = bench("compare", "--old", str(sides["old"]), "--new", *map(str, singles))
    assert done.returncode == 0 and "new: 5 runs" in done.stdout, done.stdout + done.stderr
    done = bench("compare", str(sides["old"]), str(tmp_path / "singles"))
    assert done.returncode == 0 and "new: 5 runs" in done.stdout, done.stdout + done.stderr


def test_different_server_environments_are_warned_about(tmp_path: Path) -> None:
    old = save_repeats(tmp_path / "a.json", [result() for _ in range(3)])
    new = save_repeats(tmp_path / "b.json", [result(environment={"BATCH_LINGER": "0.05"}) for _ in range(3)])
    done = bench("compare", str(old), str(new))
    assert done.returncode == 0 and "environment differs" in done.stderr and "BATCH_LINGER" in done.stderr


def write(path: Path, text: str | bytes) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_usage_errors_exit_2_with_a_message_not_1_or_a_traceback(sides: dict[str, Path], tmp_path: Path) -> None:
    old = str(sides["old"])
    quick = result().save(tmp_path, "one-quick")
    other = result(scenario="fanout").save(tmp_path, "one-fanout")
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "dir.json"
    unreadable.mkdir()  # a directory named like a file: no .json inside it
    cases: list[tuple[list[str], str]] = [
        ([old, str(tmp_path / "missing.json")], "no such file or directory"),
        ([old, write(tmp_path / "broken.json", '{"schema": 1, "scen')], "not JSON"),
        ([old, write(tmp_path / "binary.json", b"\xff\xfe\x00garbage")], "not JSON"),
        ([old, write(tmp_path / "object.json", '{"hello": "world"}')], "not a bench result"),
        ([old, write(tmp_path / "number.json", "42")], "not a bench result"),
        ([old, write(tmp_path / "ramps.json", "[1, 2]")], "not a bench result"),
        ([old, write(tmp_path / "noramps.json", "[]")], "the stress record has no ramps"),
        ([old, str(COMMITTED_RAMPS)], "one stress record on each"),
        (["--old", old, str(COMMITTED_RAMPS), "--new", old], "a stress record is compared alone"),
        (["--old", str(quick), str(other), "--new", old], "mixes runs of different scenarios"),
        ([old, str(empty)], "holds no .json record"),
        ([old, str(unreadable)], "holds no .json record"),
        ([old], "NEW is missing"),
        ([old, old, "--old", old], "OLD given twice"),
        ([old, old, "--threshold", "-0.1"], "is not a number >= 0"),
        ([old, old, "--spread-factor", "nan"], "is not a number >= 0"),
        ([old, write(tmp_path / "badrepeats.json", '{"kind": "repeats", "runs": [{}]}')], "not a bench result"),
    ]
    for argv, message in cases:
        done = bench("compare", *argv)
        assert (done.returncode, "Traceback" in done.stderr) == (2, False), (argv, done.stdout, done.stderr)
        assert message in done.stderr, (argv, done.stderr)


def test_the_committed_baseline_is_a_record_of_quick_repeats() -> None:
    baseline = load_any(ROOT / "bench" / "baseline" / "quick.json")
    assert isinstance(baseline, Repeats) and len(baseline.runs) >= MIN_RUNS
    assert {r.scenario for r in baseline.runs} == {"quick"}
    assert all(r.counts.lost == 0 and r.counts.duplicated == 0 for r in baseline.runs)
    assert "--repeat" in baseline.command


def test_stress_records_still_compare_one_a_side(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["compare", str(COMMITTED_RAMPS), str(COMMITTED_RAMPS)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("verdict: no change")
    assert isinstance(load_any(COMMITTED_RAMPS), StressRecord)


def busy(others: float, *, p50: float = 8.5, lost: int = 0) -> Result:
    """A run during which other processes used ``others`` % of a core: the server 50%, the load worker 60%."""
    run = result(p50=p50, lost=lost)
    run.server_resources = [{"t": t, "cpu_percent": 50.0, "machine_cpu_percent": 110.0 + others} for t in (1, 2)]
    run.client_cpu_percent = [60.0]
    return run


def test_how_busy_the_machine_was_with_other_work_is_said() -> None:
    assert other_cpu(busy(30.0)) == pytest.approx(30.0)
    assert other_cpu(result()) != other_cpu(result())  # NaN: a result from before the machine was sampled
    quiet = compare([busy(5.0)] * 5, [busy(10.0)] * 5)
    assert quiet.machine_lines() == [
        "other processes on the machine (median run): 5% of a core during OLD, 10% during NEW",
        "",
    ]
    crowded = compare([busy(5.0)] * 5, [busy(95.0)] * 5)
    assert crowded.new_busy and "NEW ran on a busy machine" in crowded.report() and crowded.verdict == "no change"
    assert "OLD ran on a busy machine" in compare([busy(60.0)] * 5, [busy(10.0)] * 5).report()
    assert compare([result()] * 5, [result()] * 5).machine_lines() == []


def test_runs_beside_other_work_are_set_aside_while_three_are_left() -> None:
    """Three of seven NEW runs beside another job: decided on the four quiet ones (a weak verdict: under five)."""
    old = [busy(0.0, p50=v) for v in (6.7, 6.8, 6.8, 6.9, 7.0)]
    new = [busy(0.0, p50=7.0), busy(5.0, p50=6.9), busy(0.0, p50=7.1), busy(10.0, p50=6.8)]
    new += [busy(60.0, p50=12.0), busy(85.0, p50=14.0), busy(70.0, p50=13.0)]  # the median of all seven: 7.1
    comparison = compare(old, new)
    assert (comparison.new_runs, comparison.new_set_aside, comparison.new_busy) == (4, 3, False)
    assert comparison.verdict == "no change" and comparison.weak
    assert "new: 4 runs (3 set aside)" in comparison.report()
    assert "set aside: runs beside more than 25% of a core of other work (OLD 0, NEW 3)" in comparison.report()
    # A real slow-down shows in the quiet runs too: regressed, not inconclusive.
    slowed = [busy(o, p50=p * 6) for o, p in ((0, 7.0), (5, 6.9), (0, 7.1), (10, 6.8), (60, 12.0), (85, 14.0))]
    assert compare(old, slowed).verdict == "regressed"
    # Loss counts in every run, set aside or not.
    assert compare(old, [*new[:4], busy(90.0, lost=1)]).regressed == ["lost"]


def test_latency_moved_on_a_busy_machine_is_inconclusive_loss_is_not(tmp_path: Path) -> None:
    """Contention through all of NEW's runs moves its median with a tight spread: said, exit 3, not a regression."""
    quiet = [busy(0.0) for _ in range(5)]
    crowded = [busy(85.0, p50=8.5 * 1.36) for _ in range(4)] + [busy(10.0, p50=8.5 * 1.36)]  # one quiet run of 5
    comparison = compare(quiet, crowded)
    assert comparison.regressed == ["delivery p50 ms"] and comparison.verdict == "inconclusive"
    assert "fewer than 3 of NEW's 5 runs had the machine to themselves" in comparison.verdict_line()
    assert "85% of a core in the median run" in comparison.verdict_line()
    assert compare(crowded, quiet).verdict == "improved"  # the other way round: a busy OLD, nothing to doubt
    old = save_repeats(tmp_path / "quiet.json", quiet)
    done = bench("compare", str(old), str(save_repeats(tmp_path / "crowded.json", crowded)))
    assert done.returncode == 3 and "verdict: inconclusive" in done.stdout, done.stdout + done.stderr
    crowded[2].counts.lost = 1
    done = bench("compare", str(old), str(save_repeats(tmp_path / "lossy.json", crowded)))
    assert done.returncode == 1 and "verdict: regressed: delivery p50 ms, lost" in done.stdout


def timed(reference: float, *, p50: float = 8.5) -> Result:
    """A run around which the reference workload took ``reference`` ms (before and after)."""
    run = result(p50=p50)
    run.machine["reference_ms"] = [reference * 0.99, reference * 1.01]
    return run


def test_latency_moved_on_a_slower_machine_is_inconclusive() -> None:
    """Other tenants of the host slow every core and no process here shows it: the reference workload does."""
    old = [timed(12.7) for _ in range(5)]
    assert compare(old, [timed(15.4, p50=8.5 * 1.31) for _ in range(5)]).verdict == "inconclusive"
    line = compare(old, [timed(15.4, p50=8.5 * 1.31) for _ in range(5)]).verdict_line()
    assert "the machine itself was slower during NEW (the reference workload took 21% longer)" in line
    assert compare(old, [timed(13.5, p50=8.5 * 1.31) for _ in range(5)]).verdict == "regressed"  # +6%: same machine
    report = compare(old, [timed(15.4) for _ in range(5)]).report()
    assert "reference workload (fixed CPU work, median run): 12.7 ms during OLD, 15.4 ms during NEW (+21.3%)" in report
    assert "NEW ran on a slower machine" in report
    assert compare([result()] * 5, [result()] * 5).slower is False  # results without the reference: not slower


def test_the_reference_workload_is_timed_in_cpu_milliseconds() -> None:
    value = reference_ms(repeats=1)
    assert value > 0 and value == round(value, 2)


def test_the_load_generator_cpu_is_said_beside_the_server_cpu() -> None:
    def busy(client: float) -> Result:
        run = result()
        run.client_cpu_percent = [client / 2, client]
        run.server_resources = [{"t": 1.0, "cpu_percent": 40.0}, {"t": 2.0, "cpu_percent": 60.0}]
        return run

    table = repeats_table([busy(30), busy(50), busy(70)]).splitlines()
    assert "| server CPU % (mean) | client CPU % (busiest worker) | other processes, % of a core |" in table[0]
    assert table[2].endswith("| 50% | 30% | unknown |") and table[-2].endswith("| 50% | 50% | unknown |")
    report = compare([busy(20)] * 3, [busy(95)] * 3).report()
    assert "load generator (median run, busiest worker): 20% of its core during OLD, 95% during NEW" in report
    assert "load generator" not in compare([result()], [result()]).report()  # results without it: nothing said

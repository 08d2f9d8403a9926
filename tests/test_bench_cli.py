"""``python -m bench`` as a command: stress records and their regression check, the peers table, and the flag
combinations it refuses. In-process through ``main``; the smoke tests run it as a subprocess against a server."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bench import __main__ as cli
from bench import commands, report, scenarios
from bench.compare import compare_stress
from bench.peers import launch
from bench.result import Ramp, Result, StressRecord, load_any
from bench.runner import plan_workers
from bench.target import Target, TargetError
from tests.bench_records_fake import fake_result, fake_step
from tests.server_process import ROOT

COMMITTED_RAMPS = ROOT / "docs" / "bench" / "20261123T092331-peers-quick-stress.json"


def _ramp(target: str, msgs: float, deliveries: float, *, client_bound: bool = False) -> Ramp:
    return Ramp(
        target=target,
        shape="quick",
        steps=[],
        p99_bound_ms=100.0,
        p99_at_max_ms=12.0,
        max_sustainable_msgs_per_s=msgs,
        max_sustainable_deliveries_per_s=deliveries,
        client_bound=client_bound,
        lower_bound=client_bound,
        limited_by="",
    )


def _record(*ramps: Ramp) -> StressRecord:
    return StressRecord(command="python -m bench peers quick --stress", git_commit="abc", ramps=list(ramps))


def test_a_stress_record_round_trips_with_its_schema_and_kind(tmp_path: Path) -> None:
    record = _record(_ramp("ours", 1000.0, 6000.0))
    path = record.save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["kind"] == "stress" and data["command"].startswith("python -m bench")
    loaded = load_any(path)
    assert isinstance(loaded, StressRecord) and loaded.ramps[0].max_sustainable_msgs_per_s == 1000
    assert msgspec.json.encode(loaded) == msgspec.json.encode(record)  # NaN both sides: null


def test_the_early_unversioned_list_of_ramps_still_loads() -> None:
    loaded = load_any(COMMITTED_RAMPS)
    assert isinstance(loaded, StressRecord)
    assert [r.target for r in loaded.ramps][:2] == ["minitalk-trio (durable)", "minitalk-trio (fast)"]


def test_compare_stress_flags_a_lower_maximum_and_a_missing_target() -> None:
    old = _record(_ramp("ours", 1000, 6000), _ramp("peer", 300, 1800))
    assert compare_stress(old, old)[1] == []
    slightly = _record(_ramp("ours", 950, 5700), _ramp("peer", 300, 1800))
    assert compare_stress(old, slightly)[1] == []  # -5%: inside the 10% noise threshold
    table, regressed = compare_stress(old, _record(_ramp("ours", 667, 4000)))
    assert regressed == ["ours: max_sustainable_msgs_per_s", "ours: max_sustainable_deliveries_per_s", "peer: missing"]
    assert "REGRESSED" in table
    # Better is never a regression.
    assert compare_stress(old, _record(_ramp("ours", 1500, 9000), _ramp("peer", 450, 2700)))[1] == []


def test_compare_stress_says_whose_limit_each_maximum_was() -> None:
    steps = [
        fake_step(1000, ok=True, why="ok"),
        fake_step(1500, ok=False, why="client-bound", server_cpu=55.0, client_cpu=99.0),
    ]
    old = _record(_ramp("ours", 1000, 6000))
    new = _record(msgspec.structs.replace(_ramp("ours", 1000, 6000, client_bound=True), steps=steps))
    table = compare_stress(old, new)[0].splitlines()
    assert [line.split("  ")[0] for line in table[-3:]] == ["ours", "ours", "ours"]
    assert table[-3].endswith("n/a  ->  40 / 60") and "server / client CPU % at max" in table[-3]
    assert table[-2].endswith("server  ->  client") and "whose limit" in table[-2]
    assert table[-1].endswith("below every step  ->  1,000 to 1,500 msg/s (+50%)") and "between" in table[-1]


def test_compare_exits_1_on_a_doctored_stress_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compare", str(COMMITTED_RAMPS), str(COMMITTED_RAMPS)]) == 0
    doctored = json.loads(COMMITTED_RAMPS.read_text())
    doctored[0]["max_sustainable_deliveries_per_s"] *= 0.5
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(doctored))
    capsys.readouterr()
    assert cli.main(["compare", str(COMMITTED_RAMPS), str(worse)]) == 1
    out = capsys.readouterr().out
    assert "minitalk-trio (durable): max_sustainable_deliveries_per_s" in out
    assert "max_sustainable_msgs_per_s" not in out.split("regressed past")[1]


def test_compare_refuses_a_run_result_against_a_stress_record(tmp_path: Path) -> None:
    run = ROOT / "docs" / "bench" / "20261123T092331-peers-quick-0.json"
    with pytest.raises(SystemExit) as exited:
        cli.main(["compare", str(run), str(COMMITTED_RAMPS)])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "quick", "--pid", "5"], "--pid is for a running server"),
        (["run", "quick", "--url", "http://127.0.0.1:1", "--profile"], "needs the server's --pid"),
        (["run", "stress", "--profile"], "--profile does not apply to stress"),
        (["run", "stress", "--workers", "2"], "--workers does not apply to stress"),
        (["run", "stress", "--rate", "500"], "--rate does not apply to stress"),
        (["run", "quick", "--start-rate", "500"], "--start-rate is for the stress ramp"),
        (["peers", "quick", "--start-rate", "500"], "add --stress"),
        (["run", "quick", "--narrow", "0.05"], "--narrow is for the stress ramp"),
        (["peers", "quick", "--narrow", "0"], "add --stress"),
        (["peers", "stress"], "use --stress"),
        (["run", "stress", "--shape", "nope"], "unknown --shape 'nope'"),
        (["run", "nope"], "unknown scenario 'nope'"),
        (["run", "quick", "--repeat", "0"], "is not a whole number >= 1"),
        (["run", "stress", "--repeat", "3"], "--repeat does not apply to stress"),
        (["run", "quick", "--repeat", "3", "--profile"], "--profile records one run"),
        (["run", "quick", "--ws-compression", "yes"], "is not on, off, or both"),
        (["run", "quick", "--ws-compression", "on,on"], "is not on, off, or both"),
        (["run", "quick", "--url", "http://127.0.0.1:1", "--ws-compression", "on"], "a running server (--url)"),
        (["run", "quick", "--ws-compression", "on,off", "--repeat", "2"], "does not apply to --repeat"),
        (["run", "stress", "--ws-compression", "on,off"], "does not apply to stress"),
        (["run", "quick", "--ws-compression", "on,off", "--profile"], "does not apply to --profile"),
        (["run", "fanout", "--deflate-share", "1.5"], "is not a fraction between 0 and 1"),
        (["run", "fanout", "--message-bytes", "0"], "is not a whole number >= 1"),
    ],
)
def test_flags_that_would_do_something_else_than_asked_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_peers_reports_targets_that_cannot_start_and_fails_when_none_ran(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def start(name: str) -> object:
        if name == "node-socket.io":
            raise launch.PeerUnavailable("node-socket.io skipped: `node` and `npm` are not on PATH")
        raise TargetError(f"{name} exited before listening:\nTraceback ...")

    monkeypatch.setattr(commands, "start_target", start)
    assert cli.main(["peers", "smoke", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "node-socket.io skipped" in out.out and "python-socketio failed to start" in out.out
    assert "no target produced a result" in out.err
    assert list(tmp_path.iterdir()) == []  # no report pretends to compare anything


def _result(name: str, p99: float) -> Result:
    return fake_result(name, delivery_latency_ms={"p99": p99})


def test_the_ratio_table_divides_ours_by_each_peer() -> None:
    results = [_result("minitalk-trio (durable)", 10), _result("python-socketio", 25), _result("node-socket.io", 5)]
    ramps = [
        _ramp("minitalk-trio (durable)", 12_000, 80_000),
        _ramp("python-socketio", 4_000, 20_000),
        _ramp("node-socket.io", 24_000, 100_000, client_bound=True),
    ]
    lines = report.ratio_table(results, ramps).splitlines()
    assert lines[2] == "| minitalk-trio (durable) | python-socketio | 3.0x | 4.0x | 2.5x |"
    assert lines[3] == "| minitalk-trio (durable) | node-socket.io | ≤ 0.5x | ≤ 0.8x | 0.5x |"
    assert len(lines) == 4  # ours against peers only, never peer against peer
    without_ramps = report.ratio_table(results, [])
    assert "(run with --stress)" in without_ramps


def test_a_cluster_target_spreads_workers_over_its_processes_and_knows_who_crosses() -> None:
    """Worker w drives process w mod n; a sender is remote to a worker when its own worker is on another."""
    scenario = scenarios.preset("quick", 5)
    cluster = Target("cluster", "http://127.0.0.1:4801", pid=None, settings={})
    cluster.more_urls = ["http://127.0.0.1:4802"]
    users = scenario.users
    plans = plan_workers(
        scenario, cluster, tokens=["t"] * users, room_ids=["r"] * len(scenario.rooms), workers=4, cpus=[]
    )
    assert [p.port for p in plans] == [4801, 4802, 4801, 4802]
    for plan in plans:
        mine = {m.index for m in plan.members}
        assert not mine & set(plan.remote_senders), "a worker's own members are local to it"
        assert set(plan.remote_senders) == {u for u in range(users) if (u % 4) % 2 != plan.worker % 2}
    single = Target("one", "http://127.0.0.1:4801", pid=None, settings={})
    assert all(
        not p.remote_senders
        for p in plan_workers(
            scenario, single, tokens=["t"] * users, room_ids=["r"] * len(scenario.rooms), workers=2, cpus=[]
        )
    )

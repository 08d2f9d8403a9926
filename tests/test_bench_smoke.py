"""The benchmark instrument end to end: ``python -m bench run smoke`` against a real server it starts, then
``compare``. Correctness only: counts must add up; no speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import compare
from bench.result import IdleRecord, load, load_any
from bench.scenarios import original_offered_rate, preset
from tests.server_process import ROOT


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    # user 2 of 3 polls (share 0.4 crosses a whole number at the third user): both transports are measured
    done = bench("run", "smoke", "--duration", "3", "--polling-share", "0.4", "--no-live", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [result] = out.glob("*-smoke-durable.json")
    return result


def test_smoke_run_counts_add_up(smoke_result: Path) -> None:
    data = json.loads(smoke_result.read_text())
    counts = data["counts"]
    assert counts["sent"] == counts["acked"] == 180  # 3 senders x 20 msg/s x 3 s, every one acked
    assert counts["expected_deliveries"] == 480  # room 0 has 3 members (2 senders), room 1 has 2 (1 sender)
    assert counts["delivered"] == counts["expected_deliveries"]
    assert counts["lost"] == counts["duplicated"] == counts["out_of_order"] == counts["rejected"] == 0
    assert data["schema"] == 1 and data["server"]["delivery_mode"] == "durable"
    assert data["machine"]["cores"] >= 1 and data["git_commit"]
    assert data["delivery_latency_ms"]["p50"] > 0 and data["timeline"]
    assert data["server_resources"], "the server's CPU and RSS were sampled"
    # ... and its /metrics each second: a loop lag every second, batch and commit means once messages flowed
    assert all("loop_lag_ms" in s and "outbox_mb" in s for s in data["server_resources"])
    assert any(s.get("batch_size", 0) >= 1 and s.get("commit_ms", 0) > 0 for s in data["server_resources"])
    assert data["server_metrics"]["messages_accepted_total"] == 180
    assert data["parameters"]["polling_members"] == 1


def test_smoke_run_writes_a_report_with_plots(smoke_result: Path) -> None:
    report = smoke_result.with_suffix(".md").read_text()
    assert "| lost | 0 |" in report and "| delivered | 480 |" in report
    assert "| event-loop lag ms (worst second) |" in report
    # The load generator's CPU right below the server's, and whose limit the numbers could be.
    rows = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ")]
    at = rows.index("| server CPU % (busiest second)")
    assert rows[at - 1 : at + 2] == [
        "| server CPU % (mean)",
        "| server CPU % (busiest second)",
        "| client CPU % (busiest worker)",
    ]
    assert "CPU: server " in report and "% of its core to spare" in report
    images = list((smoke_result.parent / "img").glob("*.png"))
    assert {p.stem.rsplit("-", 1)[1] for p in images} == {
        "throughput",
        "latency",
        "distribution",
        "server",
        "internals",
    }
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in images)


def test_compare_flags_a_doctored_regression(smoke_result: Path, tmp_path: Path) -> None:
    same = bench("compare", str(smoke_result), str(smoke_result))
    assert same.returncode == 0, same.stdout
    doctored = json.loads(smoke_result.read_text())
    doctored["throughput"]["deliveries_per_s"] *= 0.5
    doctored["counts"]["lost"] = 3
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(doctored))
    result = bench("compare", str(smoke_result), str(worse))
    assert result.returncode == 1
    assert "verdict: regressed: deliveries/s, lost (weak: 1 run vs 1 run" in result.stdout
    assert set(compare(load(smoke_result), load(worse)).regressed) == {"deliveries/s", "lost"}


def test_compare_tolerates_noise_below_the_threshold(smoke_result: Path) -> None:
    old = load(smoke_result)
    new = load(smoke_result)
    new.throughput.deliveries_per_s *= 0.95  # 5% slower: inside the 10% floor of single runs' rates
    assert compare(old, new).regressed == []
    assert compare(old, new, floor=0.01).regressed == ["deliveries/s"]


def test_quick_preset_offers_what_the_original_really_offers() -> None:
    offered, arithmetic = original_offered_rate(30, 1000)
    assert offered == 2970 and "30 x 3 x 33" in arithmetic
    quick = preset("quick")
    assert round(quick.offered_rate) == 2970 and quick.duration == 30 and quick.users == 30
    assert all(3 <= len(members) <= 9 for members in quick.rooms)  # 3-8 picked, plus the shared creator


def test_mixed_run_recovers_what_churners_missed(tmp_path: Path) -> None:
    """Members that leave and rejoin, and reconnect, get what they missed back from history by after_seq."""
    done = bench("run", "mixed", "--duration", "10", "--rate", "200", "--no-live", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [path] = tmp_path.glob("*-mixed-durable.json")
    data = json.loads(path.read_text())
    counts = data["counts"]
    assert counts["sent"] == counts["acked"] > 1500  # 200 msg/s x 10 s, floored per sender stream
    assert counts["delivered"] == counts["expected_deliveries"] > 0
    assert counts["lost"] == counts["duplicated"] == counts["out_of_order"] == 0
    churn = data["churn"]  # 5 churners, actions at 3, 6 and 9 s: history read, leave+rejoin, reconnect
    assert churn["history_reads"] >= 5 and churn["rejoins"] == 5 and churn["reconnects"] == 5


@pytest.fixture(scope="module")
def compression_results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """large-messages for 2 s against a fresh server with compression on, then one with it off (issue 18)."""
    out = tmp_path_factory.mktemp("bench-deflate")
    args = ["run", "large-messages", "--duration", "2", "--rate", "150", "--ws-compression", "on,off"]
    done = bench(*args, "--no-live", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return sorted(out.glob("*-large-messages-durable-ws-compression-on-off-*.json"))


def test_large_messages_on_and_off_lose_nothing_and_deflate_members_read_fewer_bytes(
    compression_results: list[Path],
) -> None:
    on, off = (load(path) for path in compression_results)
    assert [on.server["name"], off.server["name"]] == [
        "minitalk-trio (durable, ws-compression on)",
        "minitalk-trio (durable, ws-compression off)",
    ]
    for result in (on, off):
        assert result.counts.lost == result.counts.duplicated == result.counts.out_of_order == 0
        assert result.counts.delivered == result.counts.expected_deliveries > 0
        assert result.server_cpu_us_per_message > 0
        assert result.parameters["deflate_offered_members"] == 15  # half the quick preset's 30 users
    # On: the members that offered agreed, and each message reached them in fewer bytes than the plain members'.
    assert (on.wire.deflate_members, on.wire.plain_members, on.wire.declined) == (15, 15, 0)
    assert 0 < on.wire.deflate_bytes_per_message < on.wire.plain_bytes_per_message / 2
    assert on.wire.inflated > 0 and on.server_metrics["ws_deflate_total"] > 0
    assert on.server_metrics["ws_compressed_frames_total"] >= on.wire.inflated
    assert on.wire.deflate_latency_ms.p50 > 0 and on.wire.plain_latency_ms.p50 > 0  # each group's apart
    # Off: every offer declined, nothing deflated; the plain members read what they read with it on.
    assert (off.wire.deflate_members, off.wire.declined) == (0, 15)
    assert off.server_metrics["ws_deflate_total"] == off.server_metrics["ws_compressed_frames_total"] == 0
    assert abs(off.wire.plain_bytes_per_message / on.wire.plain_bytes_per_message - 1) < 0.1
    assert off.wire.plain_latency_ms == off.delivery_latency_ms  # everyone is plain


def test_the_on_off_report_puts_the_settings_side_by_side(compression_results: list[Path]) -> None:
    [page] = {path.with_name(path.stem.rsplit("-", 1)[0] + ".md") for path in compression_results}
    text = page.read_text()
    assert "| ws-compression off / ws-compression on |" in text
    assert "| wire bytes / delivered message, deflate members |" in text and "| lost | 0 | 0 |" in text


def test_idle_connections_measures_memory_with_and_without_deflate(tmp_path: Path) -> None:
    args = ["idle-connections", "--count", "40", "--deflate-share", "0,1", "--settle", "0.5", "--no-rooms"]
    done = bench(*args, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [path] = tmp_path.glob("*-idle-connections.json")
    record = load_any(path)
    assert isinstance(record, IdleRecord)
    plain, deflate = record.runs
    assert (plain.connected, plain.offered, plain.negotiated) == (40, 0, 0)
    assert (deflate.connected, deflate.offered, deflate.negotiated) == (40, 40, 40)
    assert all(run.rss_after_mb > 0 and run.errors == [] and run.rooms == 0 for run in record.runs)
    assert "| RSS per connection KB |" in path.with_suffix(".md").read_text()

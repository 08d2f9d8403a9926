"""Issue 18's bench pieces without a server: the chat text, the large-messages scenario and the knobs that give any
scenario a message size and a share of members offering permessage-deflate, what the workers are told, how a
result's bytes on the wire and CPU per message are worked out, the on/off report, the flags refused and the idle
members' rooms. The smoke tests (tests/test_bench_smoke.py) run them against real servers."""

from __future__ import annotations

import math
import zlib
from array import array
from pathlib import Path

import msgspec
import pytest

from bench import __main__ as cli
from bench import chattext, idle, report, scenarios, worker
from bench.accounting import StreamSummary
from bench.histogram import Histogram
from bench.result import IdleRecord, Result, Throughput, Wire, load_any
from bench.runner import cpu_per_message, plan_workers, wire_of
from bench.target import Target
from tests.bench_records_fake import fake_result


# -- the text -----------------------------------------------------------------------------------------------------
def test_chat_text_is_what_json_carries_as_it_is_and_the_same_for_a_seed() -> None:
    texts = chattext.texts(7, 32, 2048, 8192)
    assert texts == chattext.texts(7, 32, 2048, 8192) != chattext.texts(8, 32, 2048, 8192)
    assert all(2048 <= len(t) <= 8192 for t in texts) and len({len(t) for t in texts}) > 16
    for t in texts:
        assert t.isascii() and '"' not in t and "\\" not in t and t.isprintable()
        assert msgspec.json.encode(t) == b'"' + t.encode() + b'"'
    assert len(chattext.VOCABULARY) == len(set(chattext.VOCABULARY)) == 250


def test_chat_text_compresses_like_prose_not_like_a_repeated_character() -> None:
    """What bench/chattext.py says of it: deflate shrinks 4 KB about 2.4x (between 2x and 3x here)."""
    for seed in range(5):
        text = chattext.texts(seed, 1, 4096, 4096)[0].encode()
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        size = len(compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)) - 4
        assert 2.0 < len(text) / size < 3.0


# -- the scenarios ------------------------------------------------------------------------------------------------
def test_large_messages_is_the_quick_shape_with_chat_text_and_half_the_members_offering_deflate() -> None:
    quick = scenarios.preset("quick", 30)
    large = scenarios.by_name("large-messages")
    assert large.rooms == quick.rooms and large.users == quick.users and large.duration == 30
    assert [(s.user, s.room) for s in large.sends] == [(s.user, s.room) for s in quick.sends]
    assert round(large.offered_rate) == 1000
    assert large.text == scenarios.Text(2048, 8192) and large.deflate_share == 0.5
    assert large.deflate_members() == set(range(1, 30, 2))  # every other user: 15 of 30
    assert scenarios.by_name("large-messages", rate=300, deflate_share=1.0).deflate_members() == set(range(30))
    assert "large-messages" in scenarios.names()


def test_fanout_takes_a_message_size_and_a_deflate_share() -> None:
    plain = scenarios.by_name("fanout", members=1000, rate=40)
    assert plain.text is None and plain.deflate_share == 0 and plain.deflate_members() == set()
    sized = scenarios.by_name("fanout", members=1000, rate=40, message_bytes=4096, deflate_share=1.0)
    assert sized.text == scenarios.Text(4096, 4096) and len(sized.deflate_members()) == 1000
    assert sized.description.endswith(
        "4,096-character chat text a message; 100% of the members offer permessage-deflate"
    )
    kept = scenarios.by_name("large-messages", deflate_share=0.5)
    assert kept.description == scenarios.by_name("large-messages").description  # the scenario's own share


def test_polling_members_never_offer_deflate() -> None:
    both = scenarios.by_name("fanout", members=100, polling_share=0.2, deflate_share=0.5)
    polling, deflate = both.polling_members(), both.deflate_members()
    assert len(polling) == 20 and deflate and not polling & deflate


def test_the_workers_are_told_who_offers_and_what_text_to_send() -> None:
    scenario = scenarios.by_name("large-messages", duration=5)
    target = Target("ours", "http://127.0.0.1:4801", pid=None, settings={})
    plans = plan_workers(
        scenario, target, tokens=["t"] * scenario.users, room_ids=["r"] * len(scenario.rooms), workers=2, cpus=[]
    )
    assert {m.index for p in plans for m in p.members if m.deflate} == scenario.deflate_members()
    assert all(p.text == scenario.text for p in plans)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(plans[0]), type=worker.WorkerPlan)
    assert decoded == plans[0]  # what crosses to the worker process
    texts = worker._paddings(plans[0], 3)
    assert len(texts) == worker.TEXTS_PER_SENDER and all(2048 <= len(t) <= 8192 for t in texts)
    assert worker._paddings(msgspec.structs.replace(plans[0], text=None), 3) == ["x" * 60]


# -- what a result says -------------------------------------------------------------------------------------------
def test_bytes_on_the_wire_are_per_message_delivered_to_each_group() -> None:
    reports = [
        msgspec.convert(
            {
                "worker": 0,
                "connected": 4,
                "sent": 0,
                "acked": 0,
                "rejected": 0,
                "delivered": 0,
                "accepted": [],
                "seen": [],
                "counted": [],
                "delivery_hist": "",
                "ack_hist": "",
                "timeline": [],
                "cpu_seconds": 0.0,
                "wall_seconds": 1.0,
                "errors": [],
                "wire": [
                    [0, True, True, 10_000, 9, 0],
                    [1, False, False, 40_000, 0, 0],
                    [2, True, False, 44_000, 0, 0],
                ],
            },
            type=worker.WorkerReport,
        )
    ]
    seen = {(0, 5, 0): StreamSummary(6, [], 6, 0, 0), (0, 5, 1): StreamSummary(4, [], 4, 0, 0)}
    wire = wire_of(reports, seen, counted={1: 10, 2: 10})
    assert (wire.deflate_members, wire.plain_members, wire.declined, wire.inflated) == (1, 2, 1, 9)
    assert (wire.deflate_bytes_per_message, wire.plain_bytes_per_message) == (1_000.0, 4_200.0)
    assert math.isnan(Wire.of([]).deflate_bytes_per_message)  # nobody in the group
    everyone = Histogram.of(array("q", [5_000] * 10))
    assert wire_of(reports, seen, {1: 10, 2: 10}, everyone=everyone).plain_latency_ms.p50 == pytest.approx(
        5.0, rel=0.01
    )
    grouped = msgspec.structs.replace(
        reports[0],
        deflate_hist=Histogram.of(array("q", [9_000] * 4)).encode(),
        plain_hist=Histogram.of(array("q", [2_000] * 4)).encode(),
    )
    apart = wire_of([grouped], seen, {1: 10, 2: 10}, everyone=everyone)
    assert (apart.deflate_latency_ms.p50, apart.plain_latency_ms.p50) == pytest.approx((9.0, 2.0), rel=0.01)


def test_server_cpu_per_message_spans_the_samples() -> None:
    samples = [{"t": 0.0, "cpu_s": 10.0}, {"t": 1.0, "cpu_s": 10.5}, {"t": 2.0, "cpu_s": 11.2}]
    assert cpu_per_message(samples, 1_000) == 1_200.0  # 1.2 CPU s over 1,000 messages
    assert math.isnan(cpu_per_message(samples[:1], 1_000))  # one sample
    assert math.isnan(cpu_per_message([{"t": 0.0}, {"t": 1.0}], 1_000))  # no CPU times: a server we did not start
    assert math.isnan(cpu_per_message(samples, 0))


def _result(name: str, *, deflate_members: int, per_message: float, cpu_us: float) -> Result:
    return fake_result(
        name,
        scenario="large-messages",
        machine={"cores": 2, "cpu_model": "x", "python": "3"},
        throughput=dict.fromkeys((f.name for f in msgspec.structs.fields(Throughput)), 100.0),
        delivery_latency_ms={"p50": 2.0, "p99": 8.0},
        server_resources=[{"t": 0, "cpu_percent": 40.0, "rss_mb": 60.0}],
        server_metrics={"ws_deflate_total": 500.0 if deflate_members else 0.0},
        client_cpu_percent=[20.0],
        wire={
            "deflate_members": deflate_members,
            "plain_members": 30 - deflate_members,
            "declined": 15 - deflate_members,
            "deflate_bytes_per_message": per_message,
            "plain_bytes_per_message": 5_000.0,
        },
        server_cpu_us_per_message=cpu_us,
    )


def test_the_on_off_report_has_a_column_per_setting_and_their_ratio(tmp_path: Path) -> None:
    on = _result("minitalk-trio (durable, ws-compression on)", deflate_members=15, per_message=2_000.0, cpu_us=300.0)
    off = _result(
        "minitalk-trio (durable, ws-compression off)", deflate_members=0, per_message=float("nan"), cpu_us=250
    )
    lines = report.compression_summary([on, off]).splitlines()
    assert lines[0].endswith("| ws-compression off / ws-compression on |")
    assert "| wire bytes / delivered message, deflate members | 2,000 | n/a | n/a |" in lines
    assert "| wire bytes / delivered message, plain members | 5,000 | 5,000 | 1.00x |" in lines
    assert "| server CPU µs per message | 300 | 250 | 0.83x |" in lines
    assert "| messages deflated (ws_deflate_total) | 500 | 0.00 | 0.00x |" in lines
    page = report.markdown([on, off], {}, tmp_path, "cmd", intro="## summary")
    assert page.index("## summary") < page.index("## Every figure") < page.index("| members with permessage-deflate")
    assert "| of those, offered it and were declined | 0 | 15 |" in page
    plain = _result("x", deflate_members=0, per_message=float("nan"), cpu_us=1.0)
    plain.wire = Wire()
    assert "permessage-deflate" not in report.markdown([plain], {}, tmp_path, "cmd")  # no offer: no such rows


# -- idle connections ---------------------------------------------------------------------------------------------
def test_idle_members_are_in_rooms_of_six_made_by_one_creator_or_in_none() -> None:
    shaped = idle.idle_scenario(14, rooms=True)
    assert shaped.users == 14 and shaped.sends == []
    assert shaped.rooms == [[0, 1, 2, 3, 4, 5, 6], [0, 7, 8, 9, 10, 11, 12], [0, 13]]
    assert idle.idle_scenario(14, rooms=False).rooms == []
    assert [idle._offers(i, 0.5) for i in range(4)] == [False, True, False, True]
    assert idle.shares_of("0,1") == [0.0, 1.0]
    with pytest.raises(ValueError, match="between 0 and 1"):
        idle.shares_of("0,2")


def test_compare_refuses_a_record_of_idle_connections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = IdleRecord(command="python -m bench idle-connections").save(tmp_path / "idle.json")
    assert isinstance(load_any(path), IdleRecord)
    with pytest.raises(SystemExit) as exited:
        cli.main(["compare", str(path), str(path)])
    assert exited.value.code == 2
    assert "a record of idle connections" in capsys.readouterr().err

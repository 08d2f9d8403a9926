"""The load generator's cheap checked path (bench/client.py) sees exactly what the old one saw, and its
bulk-recorded histograms equal value-by-value recording. No speed is asserted here: ``python -m bench
receive-cost`` measures it."""

from __future__ import annotations

import random
from array import array

import pytest

from bench.__main__ import main
from bench.client import Client, Stats, _encode
from bench.histogram import HIGHEST_US, Histogram
from bench.recvcost import NOW_NS, reads
from bench.wire import client_frame


def _client(index: int = 0) -> Client:
    return Client(None, index, Stats())  # type: ignore[arg-type]  # fed by hand, never reads


def test_a_bulk_histogram_equals_recording_each_value() -> None:
    rng = random.Random(7)
    edges = [-5, 0, 1, 2047, 2048, 2049, 4095, 4096, 4097, 65535, 65536, HIGHEST_US, HIGHEST_US + 1, 10**12]
    values = edges + [int(rng.lognormvariate(8, 2)) for _ in range(50_000)]
    bulk = Histogram.of(array("q", values))
    each = Histogram()
    for value in values:
        each.record(value)
    assert list(bulk._h.counts) == list(each._h.counts)
    assert bulk.count == each.count == len(values)
    assert bulk.max_ms() == each.max_ms() and bulk._h.get_min_value() == each._h.get_min_value()
    assert bulk.summary_ms() == each.summary_ms()
    assert Histogram.of(array("q")).count == 0


@pytest.mark.parametrize("cut", [1, 7, 300, 4096])
def test_every_delivery_is_seen_once_in_order_wherever_the_reads_split(cut: int) -> None:
    data = b"".join(reads(600, 1, 6, 60))  # 6 streams of 100 messages, frames as the server encodes them
    client = _client()
    for at in range(0, len(data), cut):  # headers split across reads are completed by the next one
        client.consume(data[at : at + cut], NOW_NS)
    summaries = {key: t.summary() for key, t in client.trackers.items()}
    assert sorted(summaries) == [(s, s // 3) for s in range(6)]
    for summary in summaries.values():
        assert (summary.next, summary.missing, summary.delivered) == (100, [], 100)
        assert summary.duplicates == summary.out_of_order == 0
    assert client.stats.delivered == 600
    second = (client.stats.tick(), client.stats.last_second)
    assert second[0][2] == 600 and second[1].count == 600
    assert 1 <= second[1].percentile_ms(50) <= 20  # reads() schedules each message 1-20 ms before NOW_NS


def test_gaps_duplicates_and_late_messages_still_reach_the_tracker() -> None:
    frames = reads(5, 1, 1, 10)  # one stream, n = 0..4
    client = _client()
    for i in (0, 2, 2, 1, 4):  # 1 late, 2 twice, 3 never
        client.consume(frames[i], NOW_NS)
    summary = client.trackers[(0, 0)].summary()
    assert (summary.next, summary.missing, summary.delivered) == (5, [3], 5)
    assert (summary.duplicates, summary.out_of_order) == (1, 1)


def test_acks_are_matched_while_some_are_owed_and_deliveries_still_counted() -> None:
    client = _client(3)
    client.frame_for(1, "room-1", 0, NOW_NS - 5_000_000, "x")  # ack id 0
    client.frame_for(1, "room-1", 1, NOW_NS - 4_000_000, "x")  # ack id 1
    ok = client_frame(b'430[{"id":"a","seq":1,"timestamp":"t","ok":true}]')
    refused = client_frame(b'431[{"error":"nope","ok":false}]')
    [message] = reads(1, 1, 1, 10)
    client.consume(ok + message + refused[:9], NOW_NS)  # the refusal split across two reads
    assert client.accepted == {1: 1} and client.rejected == 0 and client.stats.delivered == 1
    client.consume(refused[9:], NOW_NS)
    assert client.rejected == 1 and not client.pending_acks
    assert client.stats.ack_latency().count == 1 and client.stats.delivery_latency().count == 1


@pytest.mark.parametrize(("room_id", "padding"), [("r-1", "x" * 60), ('a"b%d', '%s"é\\'), ("z", "x" * 300)])
def test_pre_encoded_sends_are_the_bytes_of_encoding_each_event(room_id: str, padding: str) -> None:
    client = _client(7)
    for n in range(3):
        made = client.frame_for(2, room_id, n, 123_456_789 + n, padding)
        content = f"{123_456_789 + n}|7|2|{n}|{padding}"
        payload = {"roomId": room_id, "content": content, "clientMsgId": f"7-2-{n}"}
        assert made == client_frame(b"42" + str(n).encode() + _encode(["send_message", payload]))
    assert client.written == {2: 3} and sorted(client.pending_acks) == [0, 1, 2]


def test_the_timeline_keeps_each_second_and_the_total_keeps_the_last_partial_one() -> None:
    stats = Stats()
    for latency in (1000, 2000, 3000):
        stats.delivery(latency)
    stats.ack(500)
    assert stats.tick() == (0, 1, 3)
    stats.delivery(50_000)  # after the last tick: in the total, not in the timeline
    assert [row[2] for row in stats.timeline] == [3]
    assert Histogram.decode(stats.timeline[0][3]).count == 3
    assert stats.delivered == 4 and stats.delivery_latency().count == 4
    assert stats.delivery_latency().max_ms() == pytest.approx(50, rel=1e-3)


def test_the_receive_cost_command_checks_what_it_parsed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["receive-cost", "--deliveries", "2000", "--repeat", "1", "--per-read", "8"]) == 0
    out = capsys.readouterr().out
    assert "µs/delivery (2,000 deliveries, 8 a read, 6 streams" in out and "µs/message" in out

"""The load generator's permessage-deflate (bench/inflate.py): the server's answer checked, compressed frames
inflated back into the plain frames the server would have sent, wherever the reads split, through a checking
member, the count-only reader thread and a handshake. Frames are compressed by the server's own Deflater and by
zlib directly (with and without context takeover), so the two sides' code is checked against each other."""

from __future__ import annotations

import functools
import socket
import time
import zlib

import pytest
import trio

from bench.client import Client, Stats
from bench.countreader import CountReader
from bench.inflate import (
    OFFER,
    TAIL,
    Agreement,
    DeflateRefused,
    FrameInflater,
    InflatingStream,
    agreement,
)
from bench.recvcost import NOW_NS, Content, reads
from protocol.deflate import Deflater, DeflateStats, compressed_frame
from protocol.websocket import OP_TEXT, frame

NO_TAKEOVER = Agreement(context_takeover=False)
OURS = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x="


def _answer(*extension_lines: str) -> bytes:
    return OURS + b"".join(b"\r\n" + line.encode() for line in extension_lines)


def _packets() -> list[bytes]:
    """Socket.IO packets of every size class: small (plain), over the threshold (compressed), over 64 KiB."""
    words = b"the quick brown fox jumps over the lazy dog and keeps chatting "
    return [b"2", b"40" + b'{"sid":"abc"}', b'42["message",' + words * 40 + b"]", b"3", b'42["big",' + words * 1100]


def _server_frames(packets: list[bytes], threshold: int = 100) -> tuple[bytes, bytes]:
    """(what our server sends a member that agreed, what it sends one that did not)."""
    deflater = Deflater(15, threshold, DeflateStats())
    return b"".join(deflater.frame(p) for p in packets), b"".join(frame(p) for p in packets)


def _raw_deflate(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
    """``data`` as permessage-deflate sends it: sync-flushed raw DEFLATE without the tail."""
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[: -len(TAIL)]


# -- the answer ---------------------------------------------------------------------------------------------------
def test_the_offer_is_what_chromium_sends() -> None:
    assert OFFER == b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def test_our_servers_answer_is_read_as_no_context_takeover() -> None:
    head = _answer(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    assert agreement(head) == NO_TAKEOVER


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (None, None),  # declined, or compression off
        ("sec-websocket-extensions: permessage-deflate", Agreement(context_takeover=True)),  # ws's and websockets'
        ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12", Agreement(context_takeover=True)),
        ('Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits="10"', Agreement(context_takeover=True)),
    ],
)
def test_answers_a_client_accepts(line: str | None, expected: Agreement | None) -> None:
    assert agreement(_answer(line) if line else OURS) == expected


@pytest.mark.parametrize(
    "line",
    [
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame",  # never offered
        "Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate",  # two agreements
        "Sec-WebSocket-Extensions: permessage-deflate; mystery",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits",  # the value is required
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover=1",
    ],
)
def test_answers_a_client_must_refuse(line: str) -> None:
    with pytest.raises(DeflateRefused):
        agreement(_answer(line))


# -- inflating ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [1, 2, 3, 9, 127, 1000, 65536, 1 << 20])
def test_our_servers_frames_come_out_as_their_plain_frames_wherever_the_reads_split(cut: int) -> None:
    compressed, plain = _server_frames(_packets())
    assert len(compressed) < len(plain) / 3 and compressed != plain
    inflater = FrameInflater(NO_TAKEOVER)
    out = b"".join(inflater.feed(compressed[at : at + cut]) for at in range(0, len(compressed), cut))
    assert out == plain
    assert inflater.wire_bytes == len(compressed) and inflater.inflated == 2


def test_plain_frames_pass_through_as_they_came() -> None:
    _, plain = _server_frames(_packets())
    inflater = FrameInflater(NO_TAKEOVER)
    assert inflater.feed(plain) is plain  # one complete run of plain frames: no copy
    assert inflater.feed(plain[:-5]) == plain[: plain.index(frame(_packets()[-1]))]
    assert inflater.feed(plain[-5:]) == frame(_packets()[-1])


def test_a_server_that_keeps_its_context_is_read_with_one_decompressor() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -12)  # any window: we inflate with 15
    messages = [b'42["message","hello hello hello hello"]'] * 3 + [b'42["message","' + b"ab" * 300 + b'"]']
    wire = b"".join(compressed_frame(_raw_deflate(m, compressor)) for m in messages)
    inflater = FrameInflater(Agreement(context_takeover=True))
    assert inflater.feed(wire) == b"".join(frame(m) for m in messages)
    with pytest.raises(DeflateRefused):  # the same bytes read as if each message stood alone
        FrameInflater(NO_TAKEOVER).feed(wire)


def test_a_fragmented_compressed_message_comes_out_whole_after_a_ping_between_its_frames() -> None:
    message = b'42["message","' + b"fragmented and compressed " * 50 + b'"]'
    data = _raw_deflate(message)
    first, second, last = data[: len(data) // 3], data[len(data) // 3 : -5], data[-5:]
    assert len(first) < 126 and len(second) < 126  # one-byte lengths below
    ping = bytes((0x89, 2)) + b"hi"
    wire = (
        bytes((0x40 | OP_TEXT, len(first))) + first  # RSV1, text, no FIN
        + ping
        + bytes((0x00, len(second))) + second  # a continuation, no FIN
        + bytes((0x80, len(last))) + last  # the final continuation
    )  # fmt: skip
    inflater = FrameInflater(NO_TAKEOVER)
    out = b"".join(inflater.feed(wire[at : at + 5]) for at in range(0, len(wire), 5))
    assert out == ping + frame(message)


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (bytes((0x81, 0x85)) + b"\x00" * 4 + b"hello", "masked"),
        (bytes((0xC9, 0)), "control"),  # RSV1 on a ping
        (bytes((0xC0, 1)) + b"x", "continuation"),  # RSV1 on a continuation
        (bytes((0xA1, 1)) + b"x", "RSV2"),
        (bytes((0xC1, 3)) + b"\xff\xff\xff", "DEFLATE"),
    ],
)
def test_frames_that_break_the_extension_fail_the_connection(wire: bytes, why: str) -> None:
    with pytest.raises(DeflateRefused, match=why):
        FrameInflater(NO_TAKEOVER).feed(wire)


@pytest.mark.parametrize("cut", [1, 333, 4096, 65536])
def test_a_checking_member_sees_every_compressed_delivery_once_in_order(cut: int) -> None:
    content = Content(chat_text=True, deflate=True)
    data = b"".join(reads(300, 1, 6, 3000, content=content))
    plain_size = len(b"".join(reads(300, 1, 6, 3000, content=Content(chat_text=True))))
    assert len(data) < plain_size / 2  # chat text compresses about 2.4x
    client = Client(None, 0, Stats())  # type: ignore[arg-type]  # fed by hand, never reads
    inflater = FrameInflater(NO_TAKEOVER)
    for at in range(0, len(data), cut):
        client.consume(inflater.feed(data[at : at + cut]), NOW_NS)
    assert client.stats.delivered == 300 and inflater.inflated == 300
    for tracker in client.trackers.values():
        assert (tracker.next, tracker.missing, tracker.delivered, tracker.duplicates) == (50, set(), 50, 0)


def test_the_latencies_of_members_that_inflate_are_kept_apart_and_counted_with_the_rest() -> None:
    stats = Stats()
    plain, inflating = Client(None, 0, stats), Client(None, 1, stats)  # type: ignore[arg-type]
    inflating.recorder = stats.deflate_deliveries  # what the handshake does when the server agrees
    plain.consume(b"".join(reads(60, 1, 6, 10)), NOW_NS)
    inflating.consume(b"".join(reads(30, 1, 6, 10)), NOW_NS)
    assert (len(stats.deliveries), len(stats.deflate_deliveries), stats.delivered) == (60, 30, 90)
    assert stats.tick()[2] == 90 and stats.last_second.count == 90
    assert stats.delivery_latency().count == 90 and stats.deflate_deliveries.histogram().count == 30


# -- on a socket --------------------------------------------------------------------------------------------------
def test_the_count_only_reader_counts_compressed_and_plain_members_and_their_bytes() -> None:
    compressed = b"".join(reads(200, 1, 2, 2000, content=Content(chat_text=True, deflate=True)))
    plain = b"".join(reads(200, 1, 2, 2000, content=Content(chat_text=True)))
    counted: list[int] = []
    reader = CountReader(b'"content":"', counted.append)
    pairs = [socket.socketpair() for _ in range(2)]
    inflater = FrameInflater(NO_TAKEOVER)
    reader.add(pairs[0][0].fileno(), inflater)
    reader.add(pairs[1][0].fileno())
    reader.start()
    try:
        for (_, server_end), data in zip(pairs, (compressed, plain), strict=True):
            for at in range(0, len(data), 777):  # frames and headers cut across reads
                server_end.sendall(data[at : at + 777])
        deadline = time.monotonic() + 10  # a hang guard: 400 deliveries take milliseconds
        while sum(counted) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        counts = reader.stop()
    fds = [pair[0].fileno() for pair in pairs]
    assert [counts[fd] for fd in fds] == [200, 200]
    assert [reader.wire_bytes_of(fd) for fd in fds] == [len(compressed), len(plain)]
    assert inflater.inflated == 200 and reader.errors == [] and reader.closed == []
    for pair in pairs:
        for end in pair:
            end.close()


async def test_a_member_that_agreed_reads_inflated_frames_and_counts_the_wire() -> None:
    compressed, plain = _server_frames(_packets())
    ours, theirs = trio.socket.socketpair()
    stream = InflatingStream(trio.SocketStream(ours), FrameInflater(NO_TAKEOVER))
    peer = trio.SocketStream(theirs)
    got = b""
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            for at in range(0, len(compressed), 1000):
                await peer.send_all(compressed[at : at + 1000])
            await peer.aclose()

        nursery.start_soon(send)
        while chunk := await stream.receive_some(4096):
            got += chunk
    assert got == plain and stream.inflater.wire_bytes == len(compressed)
    await stream.aclose()


async def _fake_server(stream: trio.SocketStream, answer: bytes, after_connect: bytes) -> None:
    """A server that answers the handshake with ``answer`` and follows the CONNECT reply with ``after_connect``,
    in awkward pieces: the OPEN packet in the same write as the head, the reply cut in two."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(4096)
    open_frame = frame(b'0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":60000}')
    await stream.send_all(answer + b"\r\n\r\n" + open_frame)
    assert (await stream.receive_some(4096)).endswith(b"40")  # the client's CONNECT
    reply = frame(b'40{"sid":"x1"}') + after_connect
    await stream.send_all(reply[:9])
    await trio.sleep(0.01)
    await stream.send_all(reply[9:])
    await trio.sleep_forever()


@pytest.mark.parametrize("agrees", [True, False])
async def test_the_handshake_keeps_a_frame_that_follows_the_connect_reply(agrees: bool) -> None:
    message = b'42["message",{"content":"1|2|3|0|' + b"words words " * 200 + b'"}]'
    compressed, plain = _server_frames([message])
    answer = _answer(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio.serve_tcp,
            lambda s: _fake_server(s, answer if agrees else OURS, compressed[:50] if agrees else b""),
            0,
            host="127.0.0.1",
        )
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):  # a hang guard
            client = await Client.connect("127.0.0.1", port, "t", 0, Stats(), deflate=True)
        assert client.offered and client.negotiated is agrees
        stats = client.stats
        assert client.recorder is (stats.deflate_deliveries if agrees else stats.deliveries)
        if agrees:
            stream = client.stream
            assert isinstance(stream, InflatingStream)
            assert stream.inflater.wire_bytes == 0  # the handshake is not counted
            assert stream.inflater.feed(compressed[50:]) == plain  # the 50 bytes before were kept, not lost
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_inflating_member_is_found_under_its_wrapper() -> None:
    ours, theirs = trio.socket.socketpair()
    raw = trio.SocketStream(ours)
    client = Client(InflatingStream(raw, FrameInflater(NO_TAKEOVER)), 0, Stats())
    assert client.socket_stream is raw and client.negotiated and client.wire_bytes == 0
    await client.stream.aclose()
    theirs.close()

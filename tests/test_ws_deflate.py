"""permessage-deflate, sans-IO (protocol/ws_extensions.py, protocol/deflate.py): the agreement as real clients
offer it, compressed frames both ways, and the inflate bound.

Inbound frames are made here with zlib directly (every choice a client may make: compress or not per message,
any fragmentation, pings in between, any TCP segmentation) and cross-checked with wsproto's client encoder;
outbound frames are read back with wsproto's client decoder and with a bare zlib inflater of the agreed window.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from protocol.deflate import (
    TAIL,
    Compression,
    DeflateFrameReader,
    Deflater,
    DeflateStats,
    Inflater,
    Outgoing,
    accept_offer,
    negotiate,
    wire_limit,
)
from protocol.websocket import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
    Message,
    frame,
    handshake_response,
)
from protocol.ws_extensions import extension_offers, parse_offers
from tests.ws_frames import (
    ANSWER,
    deflate_raw,
    masked,
    message_frames,
    server_frames,
    wsproto_client,
    wsproto_messages,
    zeros_deflated,
)


def stats_deflater(bits: int = 15, threshold: int = 1024) -> Deflater:
    return Deflater(bits, threshold, DeflateStats())


def headers(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), *((b"Sec-WebSocket-Extensions", v.encode()) for v in values)]


# -- the agreement --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("who", "offer"),
    [
        ("Chromium", "permessage-deflate; client_max_window_bits"),
        ("Node ws (socket.io-client under Node)", "permessage-deflate; client_max_window_bits"),
        ("websockets", "permessage-deflate; client_max_window_bits"),
        ("aiohttp", "permessage-deflate; client_max_window_bits"),
        ("Firefox", "permessage-deflate"),
        ("Autobahn 12.*", "permessage-deflate; client_no_context_takeover; client_max_window_bits"),
        ("wsproto", "permessage-deflate; client_max_window_bits=15; client_no_context_takeover"),
    ],
)
def test_real_clients_offers_are_answered_without_context_takeover(who: str, offer: str) -> None:
    assert negotiate(extension_offers(headers(offer))) == (ANSWER, 15), who


@pytest.mark.parametrize(
    ("offer", "answer", "bits"),
    [
        # The client asks for a window: answered with the same number, compressed with it.
        ("permessage-deflate; client_max_window_bits; server_max_window_bits=12", b"; server_max_window_bits=12", 12),
        ("permessage-deflate; server_no_context_takeover; server_max_window_bits=9", b"; server_max_window_bits=9", 9),
        ("permessage-deflate; server_max_window_bits=15", b"; server_max_window_bits=15", 15),
        # 8: answered as asked, compressed with zlib's 9 (whose distances stay inside 256 bytes: see below).
        ("permessage-deflate; server_max_window_bits=8", b"; server_max_window_bits=8", 8),
        ('permessage-deflate; server_max_window_bits="10"', b"; server_max_window_bits=10", 10),
        ("permessage-deflate ; server_max_window_bits = 11 ", b"; server_max_window_bits=11", 11),
        ("PerMessage-Deflate; Client_Max_Window_Bits", b"", 15),
    ],
)
def test_a_window_asked_for_is_answered_and_used(offer: str, answer: bytes, bits: int) -> None:
    assert negotiate(parse_offers(offer)) == (ANSWER + answer, bits)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=09",  # RFC 7692 §7.1.2.1: no leading zeros
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=x",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; server_no_context_takeover=1",  # takes no value
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",  # twice
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; mystery_parameter",
        'permessage-deflate; server_max_window_bits="1 0"',  # a quoted value must unquote to a token
        'permessage-deflate; server_max_window_bits="10',  # unterminated quoted string
        "permessage-deflate; ; client_max_window_bits",  # an empty parameter
        "permessage deflate",
        "x-webkit-deflate-frame",
        "",
    ],
)
def test_a_bad_offer_is_declined_not_the_handshake(offer: str) -> None:
    assert negotiate(parse_offers(offer)) is None


def test_the_first_acceptable_offer_wins_across_every_header() -> None:
    got = extension_offers(
        headers(
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=99",  # declined: bits
            'permessage-deflate; mystery="a,b;c", permessage-deflate; server_max_window_bits=10',
            "permessage-deflate",
        )
    )
    # The quoted , and ; split nothing: that offer is dropped whole (its value, unquoted, is not a token).
    assert [name for name, _ in got] == ["x-webkit-deflate-frame"] + ["permessage-deflate"] * 3
    assert got[2] == ("permessage-deflate", [("server_max_window_bits", "10")])
    escaped = parse_offers('permessage-deflate; server_max_window_bits="1\\0"')  # a quoted-pair: \0 is 0
    assert escaped == [("permessage-deflate", [("server_max_window_bits", "10")])]
    assert negotiate(got) == (ANSWER + b"; server_max_window_bits=10", 10)
    # Autobahn 13.7's three offers: the first acceptable one is taken.
    autobahn = (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover;"
        " server_max_window_bits=9, permessage-deflate; client_no_context_takeover; client_max_window_bits;"
        " server_no_context_takeover, permessage-deflate; client_no_context_takeover; client_max_window_bits"
    )
    assert negotiate(parse_offers(autobahn)) == (ANSWER + b"; server_max_window_bits=9", 9)


def test_accept_offer_reports_the_window_asked_for() -> None:
    assert accept_offer([]) == (True, None)
    assert accept_offer([("client_max_window_bits", None), ("server_max_window_bits", "13")]) == (True, 13)
    assert accept_offer([("client_max_window_bits", "16")]) == (False, None)


@given(st.text(max_size=200))
def test_any_header_value_parses_without_raising(text: str) -> None:
    for name, params in parse_offers(text):
        assert name and all(param for param, _ in params)
    negotiate(parse_offers(text))


def test_compression_off_or_not_offered_answers_as_before() -> None:
    on = Compression(enabled=True, threshold=1024)
    assert on.agree(headers()) is None
    assert Compression(enabled=False, threshold=1024).agree(headers("permessage-deflate")) is None
    agreed = on.agree(headers("permessage-deflate; client_max_window_bits"))
    assert agreed is not None and agreed[1].bits == 15
    again = on.agree(headers("permessage-deflate"))
    assert again is not None and again[1] is agreed[1], "one Deflater per window size, shared"
    response = handshake_response(b"dGhlIHNhbXBsZSBub25jZQ==", agreed[0])
    assert response.endswith(b"\r\nSec-WebSocket-Extensions: " + ANSWER + b"\r\n\r\n")
    assert b"Extensions" not in handshake_response(b"dGhlIHNhbXBsZSBub25jZQ==")


# -- outbound ---------------------------------------------------------------------------------------------------
def test_over_the_threshold_compressed_with_rsv1_below_it_plain() -> None:
    deflater = stats_deflater(threshold=1024)
    small, large = b"4" + b"x" * 1023, b"4" + b"x" * 1024
    assert deflater.frame(small) == frame(small)
    framed = deflater.frame(large)
    ((b0, data),) = server_frames(framed)
    assert b0 == 0x80 | 0x40 | OP_TEXT and len(data) < 100
    assert zlib.decompressobj(-15).decompress(data + TAIL) == large
    assert (deflater.stats.deflates, deflater.stats.compressed_frames) == (1, 1)
    noise = os.urandom(5000)  # would not shrink: sent plain, though it was deflated once to find out
    assert deflater.frame(noise, OP_BINARY) == frame(noise, OP_BINARY)
    assert (deflater.stats.deflates, deflater.stats.compressed_frames) == (2, 1)


def test_the_level_chosen_is_the_level_used() -> None:
    text = b"4" + b" ".join(b"happy new year number %d from room %d" % (i, i % 7) for i in range(300))
    sizes = {}
    for level in (1, 6, 9):
        compression = Compression(enabled=True, threshold=0, level=level)
        agreed = compression.agree(headers("permessage-deflate; client_max_window_bits"))
        assert agreed is not None
        ((b0, data),) = server_frames(agreed[1].frame(text))
        assert b0 & 0x40
        expected = zlib.compressobj(level, zlib.DEFLATED, -15)
        assert data + TAIL == expected.compress(text) + expected.flush(zlib.Z_SYNC_FLUSH)
        assert zlib.decompressobj(-15).decompress(data + TAIL) == text
        sizes[level] = len(data)
    assert sizes[1] > sizes[6] >= sizes[9], sizes


def test_outgoing_deflates_once_for_any_number_of_members() -> None:
    deflater = stats_deflater(threshold=100)
    packets = [b"4" + b"a" * 50, b"4" + b"b" * 5000, b"4" + b"c" * 3000]
    plain = b"".join(frame(p) for p in packets)
    outgoing = Outgoing(packets, plain, tail=b"4g1")
    members = 50
    got = {outgoing.frames_for(deflater, with_tail=i % 2 == 0) for i in range(members)}
    assert len(got) == 2, "two variants: with the tail and without, each built once"
    assert deflater.stats.deflates == 2, "the two packets over the threshold, once each, not once per member"
    assert deflater.stats.compressed_frames == 2 * members
    proto = wsproto_client()
    assert wsproto_messages(proto, min(got, key=len)) == [p.decode() for p in packets]
    assert wsproto_messages(proto, max(got, key=len)) == [p.decode() for p in [*packets, b"4g1"]]


def test_a_broadcast_is_worth_deflating_only_when_someone_agreed_and_a_packet_is_over_the_threshold() -> None:
    compression = Compression(enabled=True, threshold=10)
    assert not compression.worth_deflating([b"x" * 100]), "no open websocket agreed"
    compression.connections = 1
    assert compression.worth_deflating([b"x" * 5, b"x" * 11])
    assert not compression.worth_deflating([b"x" * 10, b"y"])
    assert compression.worth_deflating([b"x"], b"t" * 11), "the tail (an offset) counts too"


def test_outgoing_below_the_threshold_hands_out_the_plain_bytes_themselves() -> None:
    deflater = stats_deflater(threshold=1024)
    packets = [b"4" + b"x" * 100] * 3
    plain = b"".join(frame(p) for p in packets)
    assert Outgoing(packets, plain).frames_for(deflater) is plain
    assert deflater.stats.deflates == 0


PAYLOADS = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=500).map(str.encode),
    st.builds(
        lambda n, unit: (unit * (n // max(1, len(unit)) + 1))[:n],
        st.integers(0, 70_000),
        st.binary(min_size=1, max_size=40),
    ),
)


@given(
    packets=st.lists(PAYLOADS, min_size=1, max_size=6),
    threshold=st.sampled_from([0, 1, 100, 1024]),
    bits=st.integers(9, 15),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_outbound_frames_read_back_with_wsproto(packets: list[bytes], threshold: int, bits: int) -> None:
    deflater = stats_deflater(bits, threshold)
    framed = b"".join(deflater.frame(p, OP_BINARY) for p in packets)
    proto = wsproto_client(f"permessage-deflate; server_no_context_takeover; server_max_window_bits={bits}")
    assert wsproto_messages(proto, framed) == packets


@given(block=st.binary(min_size=251, max_size=400), repeats=st.integers(2, 20), bits=st.integers(8, 15))
@settings(max_examples=40, deadline=None)
def test_the_window_agreed_on_is_never_exceeded(block: bytes, repeats: int, bits: int) -> None:
    # Repeats at distances over 256 bytes: the smallest windows must not reach back to them. Window 8 is
    # compressed with zlib's 9, whose MAX_DIST keeps every distance within 250 bytes.
    payload = b"a" * 1000 + block * repeats  # the run of a's makes it worth compressing whatever the window
    deflater = stats_deflater(bits, threshold=0)
    ((b0, data),) = server_frames(deflater.frame(payload, OP_BINARY))
    assert b0 & 0x40
    assert inflate_within_window(data, bits) == payload


def test_the_window_check_above_can_fail() -> None:
    block = bytes(range(256)) + b"0123456789" * 5  # 306 bytes, repeated: distances of 306
    with pytest.raises(zlib.error, match="distance too far back"):
        inflate_within_window(deflate_raw(block * 10), 8)


def inflate_within_window(data: bytes, bits: int) -> bytes:
    """Inflate with a ``2**bits`` window, a byte per call: within one call zlib would also reach back into that
    call's own output, and a distance past the window would go unnoticed."""
    inflate = zlib.decompressobj(-bits)
    out = [inflate.decompress(data + TAIL, 1)]
    while inflate.unconsumed_tail:
        out.append(inflate.decompress(inflate.unconsumed_tail, 1))
    return b"".join(out)


# -- inbound ----------------------------------------------------------------------------------------------------
def feed_all(reader: FrameReader, data: bytes, cuts: Sequence[int] = ()) -> list[Message]:
    out: list[Message] = []
    points = sorted({c for c in cuts if 0 < c < len(data)})
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        out += reader.feed(data[a:b])
    return out


def refused(reader: FrameReader, data: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        reader.feed(data)
    return info.value


def test_compressed_messages_single_and_fragmented_with_pings_between() -> None:
    text = ("Grüße, " * 500).encode()
    data = (
        message_frames(text, OP_TEXT, compress=True)
        + message_frames(b"\x00" * 9000, OP_BINARY, compress=True, cuts=[1, 2, 3, 10], ping_between=True)
        + message_frames(b"plain", OP_TEXT, compress=False)
        + message_frames(text, OP_TEXT, compress=True, cuts=list(range(1, 400, 7)))
    )
    got = feed_all(DeflateFrameReader(1 << 20), data)
    assert got == [
        (OP_TEXT, text.decode()),
        (OP_PING, b"between"),
        (OP_PING, b"between"),
        (OP_PING, b"between"),
        (OP_PING, b"between"),
        (OP_BINARY, b"\x00" * 9000),
        (OP_TEXT, "plain"),
        (OP_TEXT, text.decode()),
    ]


def test_what_wsproto_compresses_is_read() -> None:
    extension = PerMessageDeflate(client_no_context_takeover=True)
    extension.finalize("server_no_context_takeover; client_no_context_takeover")
    client = FrameProtocol(client=True, extensions=[extension])
    data = bytes(client.send_data("hello " * 1000, fin=True))
    data += client.send_data(b"\x01" * 5000, fin=False) + client.send_data(b"\x02" * 100, fin=True)
    data += client.send_data("", fin=True)
    assert data[0] & 0x40, "wsproto compressed it"
    assert feed_all(DeflateFrameReader(1 << 20), data, cuts=list(range(0, len(data), 3))) == [
        (OP_TEXT, "hello " * 1000),
        (OP_BINARY, b"\x01" * 5000 + b"\x02" * 100),
        (OP_TEXT, ""),
    ]


def test_a_stream_ended_with_bfinal_is_read() -> None:
    # RFC 7692 §7.2.3.4: a sender without a sync flush may end the message with a final block instead.
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(b"x" * 3000) + compressor.flush(zlib.Z_FINISH)
    assert feed_all(DeflateFrameReader(1 << 20), masked(0x80 | 0x40 | OP_BINARY, data)) == [(OP_BINARY, b"x" * 3000)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (masked(0x80 | 0x40 | OP_PING, b"x"), 1002),  # RSV1 on a control frame
        (masked(0x40 | OP_TEXT, deflate_raw(b"ab")) + masked(0x80 | 0x40 | OP_CONTINUATION, b"\x00"), 1002),
        (masked(0x80 | 0x20 | OP_TEXT, b"x"), 1002),  # RSV2
        (masked(0x80 | 0x50 | OP_TEXT, b"x"), 1002),  # RSV1 and RSV3
        (masked(0x80 | 0x40 | OP_TEXT, b"\xff\xff\xff\xff"), 1007),  # not DEFLATE
        (masked(0x80 | 0x40 | OP_TEXT, deflate_raw(b"\xc3\x28 invalid")), 1007),  # inflates to bad UTF-8
        # A new message inside a compressed fragmented one, compressed or not.
        (masked(0x40 | OP_TEXT, deflate_raw(b"ab")) + masked(0x80 | 0x40 | OP_TEXT, deflate_raw(b"c")), 1002),
        (masked(0x40 | OP_TEXT, deflate_raw(b"ab")) + masked(0x80 | OP_TEXT, b"c"), 1002),
    ],
)
def test_broken_compressed_frames_fail_with_their_close_code(data: bytes, code: int) -> None:
    assert refused(DeflateFrameReader(1 << 20), data).code == code


def test_rsv1_without_the_extension_is_still_a_protocol_error() -> None:
    error = refused(FrameReader(1 << 20), message_frames(b"x" * 2000, OP_TEXT, compress=True))
    assert error.code == 1002


def test_messages_before_a_bad_compressed_frame_are_kept() -> None:
    data = message_frames(b"first " * 300, OP_TEXT, compress=True) + masked(0x80 | 0x40 | OP_TEXT, b"\xff" * 8)
    error = refused(DeflateFrameReader(1 << 20), data)
    assert (error.code, error.messages) == (1007, [(OP_TEXT, "first " * 300)])


def test_an_incompressible_message_near_the_bound_is_refused_by_its_size_not_its_framing() -> None:
    bound = 64 * 1024
    noise = os.urandom(bound)
    wire = deflate_raw(noise)
    assert bound < len(wire) < wire_limit(bound), "compressing noise made it larger on the wire"
    data = masked(0x80 | 0x40 | OP_BINARY, wire)
    assert DeflateFrameReader(bound).feed(data) == [(OP_BINARY, noise)]
    assert refused(DeflateFrameReader(bound - 1), data).code == 1009
    huge = masked(0x80 | 0x40 | OP_BINARY, b"\x00" * (wire_limit(bound) + 1))
    assert refused(DeflateFrameReader(bound), huge[:14]).code == 1009, "refused from its header alone"


MESSAGES = st.lists(
    st.tuples(
        st.sampled_from([OP_TEXT, OP_BINARY]),
        st.one_of(
            st.text(max_size=300),
            st.builds(lambda n, unit: (unit * (n // len(unit) + 1))[:n], st.integers(0, 70_000), st.text(min_size=1)),
        ),
        st.booleans(),  # compressed
        st.lists(st.integers(1, 3000), max_size=4),  # fragment cuts
        st.booleans(),  # pings between fragments
    ),
    max_size=6,
)


@given(messages=MESSAGES, segments=st.lists(st.integers(1, 200_000), max_size=12))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_messages_round_trip_through_the_reader(
    messages: list[tuple[int, str, bool, list[int], bool]], segments: list[int]
) -> None:
    data = b""
    expected: list[Message] = []
    for opcode, text, compress, cuts, pings in messages:
        raw = text.encode()
        data += message_frames(raw, opcode, compress=compress, cuts=cuts, ping_between=pings)
        fragments = len({c for c in cuts if 0 < c < len(deflate_raw(raw) if compress else raw)}) + 1
        expected += [(OP_PING, b"between")] * (fragments - 1) if pings else []
        expected.append((opcode, text if opcode == OP_TEXT else raw))
    assert feed_all(DeflateFrameReader(1 << 20), data, segments) == expected


# -- the bound: bombs -------------------------------------------------------------------------------------------
class Recorder:
    """The real zlib inflater, each call's output size written down."""

    def __init__(self, real: Callable[..., Any], sizes: list[int]) -> None:
        self._real, self._sizes = real, sizes

    def __call__(self, *args: Any) -> Recorder:
        self._inflate = self._real(*args)
        return self

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        assert max_length > 0, "every call is bounded"
        out: bytes = self._inflate.decompress(data, max_length)
        self._sizes.append(len(out))
        return out


@pytest.fixture
def inflated_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    monkeypatch.setattr(zlib, "decompressobj", Recorder(zlib.decompressobj, sizes))
    return sizes


BOUND = 64 * 1024


@pytest.mark.parametrize("inflated", [0, 1, BOUND - 1, BOUND, BOUND + 1, BOUND + 2, 10 * BOUND, 1024 * BOUND])
@pytest.mark.parametrize("fragments", [1, 7])
def test_a_bomb_is_refused_exactly_when_over_the_bound(
    inflated: int, fragments: int, inflated_sizes: list[int]
) -> None:
    wire = zeros_deflated(inflated)
    step = len(wire) // fragments + 1
    cuts = list(range(step, len(wire), step))
    data = message_frames_from_deflated(wire, OP_BINARY, cuts)
    reader = DeflateFrameReader(BOUND)
    if inflated <= BOUND:
        assert reader.feed(data) == [(OP_BINARY, bytes(inflated))]
    else:
        assert refused(reader, data).code == 1009
    assert sum(inflated_sizes) <= BOUND + 1, "never more than the bound and one byte inflated"


def message_frames_from_deflated(wire: bytes, opcode: int, cuts: list[int]) -> bytes:
    points = sorted({c for c in cuts if 0 < c < len(wire)})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    frames = []
    for i, piece in enumerate(pieces):
        b0 = (opcode | 0x40) if i == 0 else OP_CONTINUATION
        frames.append(masked(b0 | (0x80 if i == len(pieces) - 1 else 0), piece))
    return b"".join(frames)


@given(
    bound=st.integers(1, 20_000),
    over=st.integers(-3, 3),
    cuts=st.lists(st.integers(1, 200), max_size=5),
)
@settings(max_examples=100, deadline=None)
def test_bombs_near_any_bound(bound: int, over: int, cuts: list[int]) -> None:
    inflated = max(0, bound + over)
    sizes: list[int] = []
    inflater = Inflater(bound)
    inflater._inflate = Recorder(zlib.decompressobj, sizes)(-15)  # type: ignore[assignment]
    wire = zeros_deflated(inflated)
    points = sorted({c for c in cuts if 0 < c < len(wire)})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    produced = 0
    try:
        for i, piece in enumerate(pieces):
            produced += len(inflater.feed(piece, final=i == len(pieces) - 1))
    except FrameError as exc:
        assert exc.code == 1009 and inflated > bound
    else:
        assert produced == inflated <= bound
    assert sum(sizes) <= bound + 1

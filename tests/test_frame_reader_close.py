"""FrameReader: close-frame validation (RFC 6455 §5.5.1, §7.4), what happens around a bad frame (the good
messages before it are kept, nothing after a close is parsed), fail-fast UTF-8 in fragmented text, and
fuzzing: any bytes in any segmentation give messages or a FrameError, never anything else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    Message,
    close_frame,
    close_reply,
    is_valid_close_code,
    unmask,
)


def masked(first: int, payload: bytes, mask: bytes = b"\x0a\x0b\x0c\x0d") -> bytes:
    n = len(payload)
    length = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return bytes((first,)) + length + mask + unmask(payload, mask)


def close(code: int, reason: bytes = b"") -> bytes:
    return masked(0x80 | OP_CLOSE, struct.pack("!H", code) + reason)


def error_of(data: bytes, reader: FrameReader | None = None) -> FrameError:
    with pytest.raises(FrameError) as caught:
        (reader or FrameReader(1 << 20)).feed(data)
    return caught.value


# -- close codes, each class ------------------------------------------------------------------------------
DEFINED = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011]  # RFC 6455 §7.4.1
REGISTERED_LATER = [1012, 1013, 1014]  # IANA registry; Node's ws accepts them (see is_valid_close_code)
APPLICATION = [3000, 3999, 4000, 4999]  # §7.4.2: libraries, frameworks, applications
NEVER_ON_THE_WIRE = [1005, 1006, 1015]  # §7.4.1: "MUST NOT be set as a status code in a Close control frame"
RESERVED = [1004, 1016, 1100, 2000, 2999]  # §7.4.2: reserved for future revisions of the protocol
OUT_OF_RANGE = [0, 1, 999, 5000, 65535]  # §7.4.2: 0-999 unused; nothing is defined above 4999


@pytest.mark.parametrize("code", DEFINED + REGISTERED_LATER + APPLICATION)
def test_a_valid_close_code_is_returned_and_echoed(code: int) -> None:
    payload = struct.pack("!H", code) + "fin ✓".encode()
    assert FrameReader(100).feed(masked(0x88, payload)) == [(OP_CLOSE, payload)]
    assert close_reply(struct.pack("!H", code) + b"why") == close_frame(code)
    assert is_valid_close_code(code)


@pytest.mark.parametrize("code", NEVER_ON_THE_WIRE + RESERVED + OUT_OF_RANGE)
def test_an_invalid_close_code_is_a_protocol_error(code: int) -> None:
    assert error_of(close(code)).code == 1002
    assert not is_valid_close_code(code)


def test_every_code_is_classified_as_the_rfc_says() -> None:
    valid = {c for c in range(65536) if is_valid_close_code(c)}
    assert valid == set(DEFINED + REGISTERED_LATER) | set(range(3000, 5000))


def test_an_empty_close_is_valid_and_answered_with_1000() -> None:
    assert FrameReader(100).feed(masked(0x88, b"")) == [(OP_CLOSE, b"")]
    assert close_reply(b"") == close_frame(1000)


def test_a_one_byte_close_payload_is_a_protocol_error() -> None:
    assert error_of(masked(0x88, b"\x03")).code == 1002


def test_a_close_reason_that_is_not_utf8_is_1007() -> None:
    # Autobahn 7.5.1's reason: valid UTF-8 up to a lone surrogate half (ED A0 80).
    reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"
    assert error_of(close(1000, reason)).code == 1007


def test_our_close_reason_is_cut_on_a_character_boundary() -> None:
    sent = close_frame(1000, "é" * 100)  # 200 bytes of reason: cut to at most 123, never inside a character
    payload = sent[2:]
    assert len(payload) <= 125 and payload[2:].decode("utf-8") == "é" * 61


# -- around a bad frame -----------------------------------------------------------------------------------
def test_messages_before_a_bad_frame_come_with_the_error() -> None:
    data = masked(0x81, b"hello") + masked(0x89, b"ping") + masked(0xC1, b"rsv1 set") + masked(0x81, b"after")
    reader = FrameReader(100)
    error = error_of(data, reader)
    assert error.code == 1002
    assert error.messages == [(OP_TEXT, "hello"), (OP_PING, b"ping")]  # and nothing after the bad frame
    again = error_of(masked(0x81, b"more"), reader)  # the reader is spent: it does not parse on
    assert again.code == 1002 and again.messages == []


def test_an_invalid_close_after_a_text_keeps_the_text() -> None:
    error = error_of(masked(0x81, b"kept") + masked(0x88, b"\x03"))
    assert (error.code, error.messages) == (1002, [(OP_TEXT, "kept")])


def test_nothing_after_a_close_frame_is_parsed() -> None:
    reader = FrameReader(100)
    data = masked(0x81, b"a") + close(1000) + masked(0x81, b"b") + b"\x00garbage"
    assert reader.feed(data) == [(OP_TEXT, "a"), (OP_CLOSE, struct.pack("!H", 1000))]
    assert reader.closed and reader.feed(masked(0x81, b"c")) == []


# -- UTF-8 in fragmented text fails at the bad fragment -----------------------------------------------
def test_invalid_utf8_fails_at_its_fragment_not_at_the_end() -> None:
    reader = FrameReader(100)
    assert reader.feed(masked(OP_TEXT, "κόσμε".encode())) == []  # first fragment, valid, not final
    error = error_of(masked(OP_CONTINUATION, b"\xf4\x90\x80\x80"), reader)  # U+110000: out of range
    assert error.code == 1007


def test_a_character_split_across_fragments_is_joined() -> None:
    raw = "a🎆b".encode()
    data = masked(OP_TEXT, raw[:3]) + masked(OP_CONTINUATION, raw[3:4]) + masked(0x80, raw[4:])
    assert FrameReader(100).feed(data) == [(OP_TEXT, "a🎆b")]


def test_a_text_that_ends_inside_a_character_is_1007() -> None:
    assert error_of(masked(OP_TEXT, b"ok") + masked(0x80, b"\xe2\x82")).code == 1007


def test_fragmented_binary_is_not_utf8_checked() -> None:
    data = masked(OP_BINARY, b"\xff") + masked(0x80, b"\xfe")
    assert FrameReader(100).feed(data) == [(OP_BINARY, b"\xff\xfe")]


# -- fuzzing ----------------------------------------------------------------------------------------------
def check_messages(messages: list[Message]) -> None:
    for opcode, payload in messages:
        assert opcode in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE)
        assert isinstance(payload, str if opcode == OP_TEXT else bytes)


def feed_all(reader: FrameReader, chunks: list[bytes]) -> tuple[list[Message], FrameError | None]:
    got: list[Message] = []
    for chunk in chunks:
        try:
            got += reader.feed(chunk)
        except FrameError as exc:
            return got + exc.messages, exc
    return got, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=8))
def test_fuzz_any_bytes_in_any_segmentation(data: bytes, cuts: list[int]) -> None:
    messages, error = feed_all(FrameReader(1000), split(data, cuts))
    check_messages(messages)
    assert error is None or error.code in (1002, 1007, 1009)


@given(
    st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=5),
    st.binary(max_size=50),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_fuzz_good_frames_survive_whatever_follows(
    messages: list[str | bytes], garbage: bytes, cuts: list[int]
) -> None:
    """Valid frames from a real client (wsproto), then anything: the valid messages are always delivered."""
    proto = FrameProtocol(client=True, extensions=[])
    data = b"".join(proto.send_data(m) for m in messages) + garbage
    got, _ = feed_all(FrameReader(1000), split(data, cuts))
    check_messages(got)
    expected = [(OP_TEXT, m) if isinstance(m, str) else (OP_BINARY, m) for m in messages]
    assert got[: len(expected)] == expected

"""Sans-IO protocol tests: Engine.IO and Socket.IO codecs, chat events, websocket framing. Synchronous."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from protocol import engineio, socketio
from protocol.engineio import BINARY, OpenPayload, PacketType
from protocol.errors import ProtocolError, SocketIOError
from protocol.events import (
    ERR_CLIENT_MSG_ID,
    ERR_JOIN_FAILED,
    ERR_NOT_MEMBER,
    ERR_REQUIRED,
    ERR_SEND_FAILED,
    AckError,
    AckOk,
    Ignored,
    JoinRoom,
    LeaveRoom,
    MessageOut,
    Rejected,
    SendMessage,
    ack_packet,
    decode_event,
    error_packet,
    event_packet,
)
from protocol.socketio import SioPacket, SioType
from protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    accept_key,
    close_frame,
    frame,
    header_tokens,
    is_upgrade,
    unmask,
)


# -- Engine.IO ---------------------------------------------------------------------------------------
def test_open_packet_has_every_field_clients_need() -> None:
    text = engineio.encode_open(OpenPayload("abc", ["websocket"], 25000, 60000, 1_000_000))
    assert text[0] == "0"
    assert msgspec.json.decode(text[1:]) == {
        "sid": "abc",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 60000,
        "maxPayload": 1_000_000,
    }


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("2", (PacketType.PING, "")),
        ("2probe", (PacketType.PING, "probe")),
        ("3", (PacketType.PONG, "")),
        ('42["a"]', (PacketType.MESSAGE, '2["a"]')),
        ("5", (PacketType.UPGRADE, "")),
        ("6", (PacketType.NOOP, "")),
        ("1", (PacketType.CLOSE, "")),
        ("bAAEC", (BINARY, "AAEC")),
    ],
)
def test_decode_packet(text: str, decoded: tuple[int, str]) -> None:
    assert engineio.decode_packet(text) == decoded


@pytest.mark.parametrize("text", ["", "7", "x", "\x1e"])
def test_decode_packet_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        engineio.decode_packet(text)


def test_payload_round_trip_and_limits() -> None:
    packets = ['42["send_message",{"roomId":"r","content":"a\\u001eb"}]', "3", "2probe"]
    body = engineio.encode_payload(packets)
    assert [engineio.decode_packet(p) for p in packets] == engineio.decode_payload(body, max_packets=10)
    many = engineio.encode_payload(["3"] * 500)
    assert len(engineio.decode_payload(many, max_packets=1000)) == 500, "POSTs may hold far more than 16 (§3.6-7)"
    with pytest.raises(ProtocolError, match="too many packets"):
        engineio.decode_payload(many, max_packets=100)


# -- Socket.IO ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "packet"),
    [
        ("0", SioPacket(SioType.CONNECT)),
        ("0{}", SioPacket(SioType.CONNECT, data="{}")),
        ('0{"token":"x"}', SioPacket(SioType.CONNECT, data='{"token":"x"}')),
        ("0/admin,", SioPacket(SioType.CONNECT, "/admin")),
        ("1", SioPacket(SioType.DISCONNECT)),
        ('2["a",1]', SioPacket(SioType.EVENT, data='["a",1]')),
        ('212["a"]', SioPacket(SioType.EVENT, ack_id=12, data='["a"]')),
        ('2/chat,7["a"]', SioPacket(SioType.EVENT, "/chat", 7, '["a"]')),
        (
            '51-["a",{"_placeholder":true,"num":0}]',
            SioPacket(SioType.BINARY_EVENT, data='["a",{"_placeholder":true,"num":0}]', attachments=1),
        ),
    ],
)
def test_socketio_decode(text: str, packet: SioPacket) -> None:
    assert socketio.decode(text) == packet


@pytest.mark.parametrize("text", ["", "9", "x", "5[]", "2" + "9" * 20 + "[]"])
def test_socketio_decode_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        socketio.decode(text)


def test_socketio_encode() -> None:
    assert socketio.encode(SioType.CONNECT, '{"sid":"x"}') == '0{"sid":"x"}'
    assert socketio.encode(SioType.ACK, "[1]", ack_id=3) == "3" + "3[1]"
    assert socketio.encode(SioType.CONNECT_ERROR, "{}", namespace="/a") == "4/a,{}"


def test_socketio_args_put_attachments_in_place_of_their_placeholders() -> None:
    packet = socketio.decode('52-7["m",{"a":[{"_placeholder":true,"num":1}]},{"_placeholder":true,"num":0}]')
    assert (packet.type, packet.ack_id, packet.attachments) == (SioType.BINARY_EVENT, 7, 2)
    packet = msgspec.structs.replace(packet, binary=(b"zero", b"one"))
    assert socketio.decode_args(packet) == ["m", {"a": [b"one"]}, b"zero"]
    # A dict that only looks like a placeholder (extra keys, a non-int num) is data.
    odd = '["m",{"_placeholder":true,"num":0,"x":1},{"_placeholder":true,"num":"0"}]'
    assert socketio.decode_args(SioPacket(SioType.EVENT, data=odd)) == msgspec.json.decode(odd)


def test_socketio_args_encode_bytes_as_attachments() -> None:
    text, binary = socketio.encode_args(SioType.EVENT, ["m", 1, {"b": b"\x01"}, [b"\x02"]], namespace="/c")
    assert text == '52-/c,["m",1,{"b":{"_placeholder":true,"num":0}},[{"_placeholder":true,"num":1}]]'
    assert binary == [b"\x01", b"\x02"]
    assert socketio.encode_args(SioType.ACK, [b""], ack_id=9) == ('61-9[{"_placeholder":true,"num":0}]', [b""])
    assert socketio.encode_args(SioType.ACK, [1, "2"], ack_id=9) == ('39[1,"2"]', [])


@pytest.mark.parametrize(
    "packet",
    [
        SioPacket(SioType.EVENT, data="{}"),
        SioPacket(SioType.EVENT, data="[1]"),
        SioPacket(SioType.EVENT, data="[]"),
        SioPacket(SioType.EVENT, data='abc["m"]'),
        SioPacket(SioType.ACK, data="1"),
        SioPacket(SioType.BINARY_EVENT, data='["m",{"_placeholder":true,"num":1}]', attachments=1, binary=(b"",)),
    ],
)
def test_socketio_args_reject_what_is_not_an_argument_array(packet: SioPacket) -> None:
    with pytest.raises(SocketIOError):
        socketio.decode_args(packet)


def test_socketio_ack_args_may_be_empty() -> None:
    assert socketio.decode_args(SioPacket(SioType.ACK, ack_id=1, data="[]")) == []


# -- chat events -------------------------------------------------------------------------------------
def test_events_decode_into_structs() -> None:
    event = decode_event('["send_message",{"roomId":"r","content":"hi 🎆","clientMsgId":"c-1"}]')
    assert isinstance(event, SendMessage)
    assert (event.data.roomId, event.data.content, event.data.clientMsgId) == ("r", "hi 🎆", "c-1")
    assert isinstance(decode_event('["join_room",{"roomId":"r"}]'), JoinRoom)
    assert isinstance(decode_event('["leave_room",{"roomId":"r","extra":1}]'), LeaveRoom)
    # A frontend/light-load-test style extra field or extra argument is tolerated.
    assert isinstance(decode_event('["send_message",{"roomId":"r","content":"x","foo":1},"more"]'), SendMessage)


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        ('["send_message",null]', Rejected("send_message", ERR_SEND_FAILED)),
        ('["send_message"]', Rejected("send_message", ERR_SEND_FAILED)),
        ('["send_message",{"roomId":"r"}]', Rejected("send_message", ERR_REQUIRED)),
        ('["send_message",{"roomId":"r","content":""}]', Rejected("send_message", ERR_REQUIRED)),
        ('["send_message",{"roomId":"r","message":"x"}]', Rejected("send_message", ERR_REQUIRED)),
        ('["send_message",{"roomId":5,"content":"x"}]', Rejected("send_message", ERR_REQUIRED)),
        ('["send_message",{"roomId":"r","content":"x","clientMsgId":7}]', Rejected("send_message", ERR_CLIENT_MSG_ID)),
        (
            '["send_message",{"roomId":"r","content":"x","clientMsgId":"' + "é" * 65 + '"}]',
            Rejected("send_message", ERR_CLIENT_MSG_ID),
        ),
        ('["join_room",null]', Rejected("join_room", ERR_JOIN_FAILED)),
        ('["join_room",{}]', Rejected("join_room", ERR_NOT_MEMBER)),
        ('["typing",{"roomId":"r"}]', Ignored("typing")),
        ("[]", Ignored("")),
        ("{}", Ignored("")),
        ("[1,2]", Ignored("")),
    ],
)
def test_event_rejections_carry_the_originals_texts(raw: str, outcome: Any) -> None:
    assert decode_event(raw) == outcome


def test_client_msg_id_limit_is_in_bytes() -> None:
    assert isinstance(
        decode_event('["send_message",{"roomId":"r","content":"x","clientMsgId":"' + "a" * 128 + '"}]'), SendMessage
    )
    assert isinstance(
        decode_event('["send_message",{"roomId":"r","content":"x","clientMsgId":"' + "a" * 129 + '"}]'), Rejected
    )


def test_server_packets() -> None:
    assert event_packet("joined_room", {"roomId": "r"}) == b'42["joined_room",{"roomId":"r"}]'
    assert error_packet("nope") == b'42["error",{"message":"nope"}]'
    assert ack_packet(7, AckOk("i", 3, "t")) == b'437[{"id":"i","seq":3,"timestamp":"t","ok":true}]'
    assert ack_packet(0, AckError("bad")) == b'430[{"error":"bad","ok":false}]'
    out = msgspec.json.encode(MessageOut("message", "r", "alice", "hi", "t", "i", 1))
    assert out == b'{"type":"message","roomId":"r","sender":"alice","content":"hi","timestamp":"t","id":"i","seq":1}'


# -- websocket ---------------------------------------------------------------------------------------
def test_accept_key_rfc6455_example() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_connection_headers_are_merged_like_node() -> None:
    # websocket-client 1.6.4 with the load test's extra header (contract §3.6-2).
    headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Connection", b"keep-alive")]
    assert header_tokens(headers, b"connection") == {"upgrade", "keep-alive"}
    assert is_upgrade(b"GET", headers)
    assert is_upgrade(b"GET", [(b"upgrade", b"WebSocket"), (b"connection", b"keep-alive, Upgrade")])
    assert not is_upgrade(b"GET", [(b"Upgrade", b"websocket"), (b"Connection", b"keep-alive")])
    assert not is_upgrade(b"POST", headers)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_frames_parse_back(size: int) -> None:
    payload = b"x" * size
    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(frame(payload))
    [parsed] = list(parser.received_frames())
    assert parsed.payload == payload.decode() and parsed.frame_finished and parsed.message_finished
    assert close_frame(1009, "too big")[:4] == bytes((0x88, 9)) + struct.pack("!H", 1009)


# -- fuzzing: no input raises anything but the package's own ProtocolError ---------------------------------
PACKETISH = st.text(alphabet=st.sampled_from('0123456789/,[]{}"abc-\x1e:eé\\'), max_size=40) | st.text(max_size=40)


@given(PACKETISH)
def test_fuzz_engineio(text: str) -> None:
    try:
        kind, _ = engineio.decode_packet(text)
    except ProtocolError:
        return
    assert kind == BINARY or 0 <= kind <= 6


@given(PACKETISH, st.integers(min_value=1, max_value=64))
def test_fuzz_engineio_payload(body: str, max_packets: int) -> None:
    with contextlib.suppress(ProtocolError):
        assert len(engineio.decode_payload(body, max_packets=max_packets)) <= max_packets


@given(PACKETISH)
def test_fuzz_socketio(text: str) -> None:
    try:
        packet = socketio.decode(text)
    except ProtocolError:
        return
    assert packet.ack_id is None or 0 <= packet.ack_id <= socketio.MAX_ACK_ID


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["roomId", "content", "clientMsgId", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.sampled_from(["send_message", "join_room", "leave_room", "other"]), JSONISH)
def test_fuzz_events(name: str, payload: Any) -> None:
    """Any JSON array decodes to an event, a rejection or an ignore: never an exception."""
    outcome = decode_event(msgspec.json.encode([name, payload]))
    assert isinstance(outcome, SendMessage | JoinRoom | LeaveRoom | Rejected | Ignored)


@given(st.binary(max_size=40))
def test_fuzz_events_raw_bytes(raw: bytes) -> None:
    with contextlib.suppress(SocketIOError):  # not JSON at all: the hub closes the session
        decode_event(raw)


def _at_depth(depth: int, call: Callable[[], object]) -> object:
    """Run ``call`` with ``depth`` Python frames below it: a server decodes deep inside trio's stack."""
    return call() if depth == 0 else _at_depth(depth - 1, call)


@pytest.mark.parametrize("tail", ["", "]" * 5000 + "]"])
@pytest.mark.parametrize("depth", [0, 800, 950])
def test_deep_nesting_is_a_protocol_error(tail: str, depth: int) -> None:
    """~1,000 nested ``[`` once made msgspec raise RecursionError, which killed the process (issue 11)."""
    raw = '["send_message",' + "[" * 5000 + tail
    with pytest.raises(SocketIOError):
        _at_depth(depth, lambda: decode_event(raw))


# -- inbound frames (FrameReader), cross-checked against wsproto's client side --------------------------------
def client_frames(*messages: str | bytes, fragment: int = 0) -> bytes:
    """Frames as a real client (wsproto) masks and fragments them."""
    proto = FrameProtocol(client=True, extensions=[])
    out = b""
    for message in messages:
        if fragment and len(message) > fragment:
            chunks = [message[i : i + fragment] for i in range(0, len(message), fragment)]
            for i, chunk in enumerate(chunks):
                out += proto.send_data(chunk, fin=i == len(chunks) - 1)
        else:
            out += proto.send_data(message)
    out += proto.ping(b"hi")
    return out


def test_frame_reader_reads_what_wsproto_clients_write() -> None:
    messages: list[str | bytes] = ['42["send_message",{"content":"🎆"}]', "x" * 200, "y" * 70_000, b"\x00\x01binary"]
    expected = [(OP_TEXT, m) if isinstance(m, str) else (OP_BINARY, m) for m in messages] + [(OP_PING, b"hi")]
    assert FrameReader(1 << 20).feed(client_frames(*messages)) == expected
    fragmented = client_frames("a" * 1000, fragment=64)
    assert FrameReader(1 << 20).feed(fragmented) == [(OP_TEXT, "a" * 1000), (OP_PING, b"hi")]
    reader = FrameReader(1 << 20)
    data = client_frames(*messages)
    got = []
    for i in range(0, len(data), 7):  # arbitrary TCP segmentation
        got += reader.feed(data[i : i + 7])
    assert got == expected


def _masked(first: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    length = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return bytes((first,)) + length + mask + unmask(payload, mask)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x81\x02ab", 1002),  # unmasked
        (_masked(0xC1, b"x"), 1002),  # RSV1 without an extension
        (_masked(0x83, b"x"), 1002),  # reserved opcode
        (_masked(0x09, b"x"), 1002),  # fragmented ping
        (_masked(0x89, b"x" * 126), 1002),  # oversize control frame
        (_masked(0x80, b"x"), 1002),  # continuation with nothing to continue
        (_masked(0x01, b"a") + _masked(0x81, b"b"), 1002),  # new message inside a fragmented one
        (_masked(0x81, b"\xff\xfe"), 1007),  # not UTF-8
        (_masked(0x81, b"x" * 200), 1009),
    ],  # over the limit (100 bytes below)
)
def test_frame_reader_enforces_rfc6455(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as caught:
        FrameReader(100).feed(data)
    assert caught.value.code == code


def test_frame_reader_refuses_a_huge_declared_length_before_buffering() -> None:
    header = bytes((0x81, 0x80 | 127)) + (2**62).to_bytes(8, "big") + b"mask"
    with pytest.raises(FrameError) as caught:
        FrameReader(1 << 20).feed(header)
    assert caught.value.code == 1009


@given(st.binary(max_size=200))
def test_fuzz_frame_reader(data: bytes) -> None:
    reader = FrameReader(1000)
    with contextlib.suppress(FrameError):
        for opcode, payload in reader.feed(data):
            assert opcode in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE)
            assert isinstance(payload, str if opcode == OP_TEXT else bytes)


@given(st.text(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_round_trips(text: str, mask: bytes) -> None:
    payload = text.encode()
    assert unmask(unmask(payload, mask), mask) == payload
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

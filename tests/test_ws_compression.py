"""permessage-deflate in the server: compressed once per broadcast, and what real clients see.

The first tests drive :class:`~server.delivery.Delivery` with real sessions whose websocket outboxes write to
socketpairs, read back with wsproto's client decoder. The rest run the real server on 127.0.0.1: the
``websockets`` library's client (which offers permessage-deflate) beside python-socketio's (websocket-client
1.6.4, which does not), socket.io-client on Node (polling, then a websocket upgrade that offers it), a bomb.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from protocol.deflate import TAIL, Compression, Deflater
from protocol.events import MessageOut, message_packet
from protocol.websocket import frame
from server.delivery import Delivery
from server.outbox import Flusher, Outbox
from server.session import Session
from storage.sqlite.engine import SqliteEngine
from tests.conftest import RunningServer, make_config, start_server
from tests.deflate_client import DeflateClient
from tests.node_peer import NodeClient, node_or_skip
from tests.sio_peer import Peer, make_room, make_users, wait_until
from tests.ws_frames import masked, server_frames, wsproto_client, wsproto_messages, zeros_deflated

ROOM = "room-1"
OFFER = [(b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")]


def packet(content: str, seq: int) -> bytes:
    return message_packet(MessageOut("message", ROOM, "alice", content, "t", f"m{seq}", seq))


class Member:
    """A session on a websocket whose outbox writes into a socketpair; ``read`` is what the client got."""

    def __init__(self, name: str, flusher: Flusher, deflate: Deflater | None) -> None:
        self.near, self.far = socket.socketpair()
        self.near.setblocking(False)
        self.far.setblocking(False)
        self.session = Session(
            name,
            None,
            now=0.0,
            ping_interval=25,
            connect_timeout=45,
            max_queue_bytes=1 << 20,
            max_queue_packets=1000,
            on_overflow=lambda s, why: None,
        )
        self.outbox = Outbox(
            self.near.fileno(), flusher, max_bytes=1 << 22, max_messages=1000, on_overflow=lambda why: None
        )
        self.session.attach_websocket(self.outbox, trio.CancelScope(), deflate)

    def read(self) -> bytes:
        self.outbox.write_now()
        data = b""
        while True:
            try:
                chunk = self.far.recv(1 << 20)
            except BlockingIOError:
                return data
            data += chunk

    def close(self) -> None:
        self.near.close()
        self.far.close()


@pytest.fixture
def members() -> Iterator[list[Member]]:
    made: list[Member] = []
    yield made
    for member in made:
        member.close()


def delivery_for(compression: Compression, tmp_path: Path, **kwargs: Any) -> Delivery:
    engine = SqliteEngine(str(tmp_path / "unused.db"))  # a live push never reads the log
    return Delivery(engine, lambda room: 0, high_water=1 << 20, page=10, compression=compression, **kwargs)


def agreed(compression: Compression, offer: bytes = OFFER[0][1]) -> Deflater:
    answer = compression.agree([(b"sec-websocket-extensions", offer)])
    assert answer is not None
    return answer[1]


async def test_a_broadcast_to_n_members_deflates_once_and_sends_n_compressed_frames(
    tmp_path: Path, members: list[Member]
) -> None:
    compression = Compression(enabled=True, threshold=1024)
    delivery = delivery_for(compression, tmp_path)
    flusher = Flusher()
    n = 40
    deflating = [Member(f"z{i}", flusher, agreed(compression)) for i in range(n)]
    plain = [Member(f"p{i}", flusher, None) for i in range(5)]
    members += deflating + plain
    compression.connections = n  # as the endpoint counts them
    for member in members:
        delivery.subscribe(member.session, ROOM)
    packets = [packet("hi", 1), packet("long " * 1000, 2), packet("there", 3)]
    before = (compression.stats.deflates, compression.stats.compressed_frames)

    assert delivery.publish(ROOM, packets, 1) == n + 5

    stats = compression.stats
    assert (stats.deflates - before[0], stats.compressed_frames - before[1]) == (1, n), "one deflate, n frames"
    expected = [p.decode() for p in packets]
    for member in deflating:
        data = member.read()
        assert [b0 & 0x40 for b0, _ in server_frames(data)] == [0, 0x40, 0]
        assert wsproto_messages(wsproto_client(), data) == expected
    for member in plain:
        data = member.read()
        assert data == b"".join(frame(p) for p in packets), "the plain frames, as before"


async def test_members_that_agreed_on_different_windows_cost_one_deflate_per_window(
    tmp_path: Path, members: list[Member]
) -> None:
    compression = Compression(enabled=True, threshold=1024)
    delivery = delivery_for(compression, tmp_path)
    flusher = Flusher()
    small = agreed(compression, b"permessage-deflate; server_max_window_bits=9")
    members += [Member(f"a{i}", flusher, agreed(compression)) for i in range(10)]
    members += [Member(f"b{i}", flusher, small) for i in range(10)]
    compression.connections = 20
    for member in members:
        delivery.subscribe(member.session, ROOM)
    big = packet("0123456789abcdef" * 300, 1)
    delivery.publish(ROOM, [big], 1)
    assert (compression.stats.deflates, compression.stats.compressed_frames) == (2, 20)
    for member in members[10:]:
        ((b0, data),) = server_frames(member.read())
        assert b0 & 0x40 and zlib.decompressobj(-9).decompress(data + TAIL) == big


async def test_with_offsets_the_compressed_frames_carry_them_too(tmp_path: Path, members: list[Member]) -> None:
    compression = Compression(enabled=True, threshold=1024)
    delivery = delivery_for(compression, tmp_path, offsets=True)
    flusher = Flusher()
    members += [Member(f"z{i}", flusher, agreed(compression)) for i in range(4)]
    compression.connections = 4
    for member in members:
        delivery.subscribe(member.session, ROOM)
    offset = b'42["offset","g7"]'
    packets = [packet("x" * 2000, 1)]
    delivery.publish(ROOM, packets, 1, offset=offset, not_for={members[0].session})
    assert compression.stats.deflates == 1
    got = [wsproto_messages(wsproto_client(), m.read()) for m in members]
    assert got[0] == [packets[0].decode()], "a member of several rooms gets its offset after the last one"
    assert got[1:] == [[packets[0].decode(), offset.decode()]] * 3


async def test_while_nobody_agreed_nothing_is_deflated(tmp_path: Path, members: list[Member]) -> None:
    # The endpoint's count is 0: the broadcast never looks at a member's extension (the plain path as it was).
    compression = Compression(enabled=True, threshold=1024)
    delivery = delivery_for(compression, tmp_path)
    members.append(Member("z", Flusher(), agreed(compression)))
    delivery.subscribe(members[0].session, ROOM)
    big = packet("x" * 3000, 1)
    delivery.publish(ROOM, [big], 1)
    assert compression.stats.deflates == 0
    assert members[0].read() == frame(big)


async def test_acks_and_events_to_one_member_follow_the_threshold(members: list[Member]) -> None:
    compression = Compression(enabled=True, threshold=1024)
    member = Member("z", Flusher(), agreed(compression))
    members.append(member)
    small, large = b'43[{"ok":true}]', b"42" + b'["history",' + b'"x"' * 1000 + b"]"
    member.session.send(small)
    member.session.send(large)
    member.session.send_binary(b"\x00" * 5000)
    data = member.read()
    assert [b0 for b0, _ in server_frames(data)] == [0x81, 0xC1, 0xC2]
    assert wsproto_messages(wsproto_client(), data) == [small.decode(), large.decode(), b"\x00" * 5000]
    assert (compression.stats.deflates, compression.stats.compressed_frames) == (2, 2)


# -- the real server ---------------------------------------------------------------------------------------------
async def connect_peer(peers: list[Peer], url: str, name: str, token: str) -> Peer:
    peer = Peer(name)
    peers.append(peer)
    await peer.connect(url, token)
    return peer


def metrics(text: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}


async def test_a_compressing_client_and_a_plain_one_share_a_room(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    tokens = await make_users(client, ["ws", "sio"])
    room = await make_room(client, tokens["sio"], ["ws"])
    ws = await DeflateClient.connect(running.url, tokens["ws"])
    try:
        assert ws.deflate is not None, "the websockets client agreed on permessage-deflate"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )
        await ws.socketio_connect()  # its "40" went compressed: the library compresses every message
        sio = await connect_peer(peers, running.url, "sio", tokens["sio"])
        contents = ["small", "long " * 600, "tiny", "0123456789" * 500, "x" * 700]  # 700: a ~870-byte packet
        for content in contents:
            ack = await sio.call("send_message", {"roomId": room, "content": content})
            assert ack["ok"], ack
        assert [(await ws.event("message"))["content"] for _ in contents] == contents
        # What the websockets client sends is compressed, large or not: the server reads it.
        await ws.send('42["send_message",' + f'{{"roomId":"{room}","content":"{"z" * 5000}"}}]')
        assert (await ws.event("message"))["content"] == "z" * 5000
        await wait_until(lambda: [m["content"] for m in sio.received("message")] == [*contents, "z" * 5000])

        messages = [(b0, text) for b0, text in ws.received if text.startswith('42["message"')]
        assert len(messages) == len(contents) + 1
        for b0, text in messages:
            assert bool(b0 & 0x40) == (len(text.encode()) > 1024), (b0, len(text))
        large = sum(1 for _, text in messages if len(text.encode()) > 1024)
        assert large == 3
        values = metrics((await client.get("/metrics")).text)
        assert values["minitalk_ws_deflate_total"] == large, "once per broadcast; the sio member is plain"
        assert values["minitalk_ws_compressed_frames_total"] == large
    finally:
        await ws.aclose()


async def test_a_bomb_closes_its_senders_connection_with_1009_and_the_room_goes_on(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    tokens = await make_users(client, ["bomber", "ws", "sio"])
    room = await make_room(client, tokens["sio"], ["bomber", "ws"])
    bomber = await DeflateClient.connect(running.url, tokens["bomber"])
    ws = await DeflateClient.connect(running.url, tokens["ws"])
    try:
        await bomber.socketio_connect()
        await ws.socketio_connect()
        sio = await connect_peer(peers, running.url, "sio", tokens["sio"])
        # 64 MiB of zeros (the limit is 1 MiB) is about 64 KiB on the wire; the server stops at 1 MiB + 1 byte.
        await bomber.send_raw(masked(0x80 | 0x40 | 0x1, zeros_deflated(64 << 20)))
        assert await bomber.wait_closed() == 1009

        ack = await sio.call("send_message", {"roomId": room, "content": "still here " * 200})
        assert ack["ok"], ack
        assert (await ws.event("message"))["content"] == "still here " * 200
        await wait_until(lambda: len(sio.received("message")) == 1)
        # The bomber's session is gone; the ws and sio members' are not.
        await wait_until(lambda: running.server.hub.statistics()["websocket"] == 2)
    finally:
        await bomber.aclose()
        await ws.aclose()


async def test_with_compression_off_the_handshake_answers_without_it(
    nursery: trio.Nursery, db_path: Path, peers: list[Peer]
) -> None:
    server = await start_server(nursery, make_config(db_path, ws_compression="off"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        tokens = await make_users(http, ["ws", "sio"])
        room = await make_room(http, tokens["sio"], ["ws"])
        ws = await DeflateClient.connect(server.url, tokens["ws"])
        try:
            assert ws.deflate is None and ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.socketio_connect()
            sio = await connect_peer(peers, server.url, "sio", tokens["sio"])
            await sio.call("send_message", {"roomId": room, "content": "long " * 600})
            assert (await ws.event("message"))["content"] == "long " * 600
            assert all(not b0 & 0x40 for b0, _ in ws.received)
            assert server.server.hub.compression.stats.deflates == 0
        finally:
            await ws.aclose()
    await server.stop()


async def test_socketio_client_on_node_upgrades_with_compression_and_reads_it(
    nursery: trio.Nursery, running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    node = node_or_skip()
    tokens = await make_users(client, ["node", "sio"])
    room = await make_room(client, tokens["sio"], ["node"])
    frontend = await NodeClient.start(nursery, node, running.url, tokens["node"])
    try:
        with trio.fail_after(20):  # a hang guard: polling, then the websocket upgrade
            while not frontend.of("upgrade"):  # noqa: ASYNC110 (filled by the reader task)
                await trio.sleep(0.02)
        assert running.server.hub.compression.connections == 1, "Node's ws offered permessage-deflate; agreed"
        sio = await connect_peer(peers, running.url, "sio", tokens["sio"])
        for i in range(3):
            await sio.call("send_message", {"roomId": room, "content": f"{i} " + "long " * 600})
        await wait_until(lambda: len(frontend.messages) == 3)
        assert [m["seq"] for m in frontend.messages] == [1, 2, 3], frontend.describe()
        assert running.server.hub.compression.stats.compressed_frames == 3
    finally:
        await frontend.exit()

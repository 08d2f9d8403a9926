"""gzip on a real server: history pages, polling payloads, the web files, and the clients that decode them.

Requests go out over a raw socket with h11 wherever the bytes on the wire matter: it sends exactly the
Accept-Encoding given (or none) and decodes nothing, so what a test sees is what the server sent.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import h11
import httpx
import msgspec
import pytest
import trio

from server.config import Config, ConfigError, load_config
from server.routes_web import WEB_DIR, load_files
from tests.conftest import RunningServer, bearer, make_config, signup_and_login, start_server
from tests.raw_client import raw_client
from tests.sio_peer import Peer, make_room, make_users, wait_until
from tests.test_rest_chat import create_room, post_messages

Headers = Sequence[tuple[str, str]]

# The load test's kind of message (contract §6.3): a worker tag and a festive line with an emoji.
_LINES = [
    "Happy New Year! 🎉",
    "Fireworks over the river 🎆",
    "Counting down: 3... 2... 1...",
    "Champagne for everyone 🥂",
    "New year, new resolutions ✨",
    "See you next year!",
]


def festive(n: int, seed: int = 2025) -> list[str]:
    rng = random.Random(seed)
    return [f"[Worker-{rng.randrange(30)}] {rng.choice(_LINES)} #{rng.randrange(100_000)}" for _ in range(n)]


class Reply(msgspec.Struct):
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with ", "
    body: bytes  # as sent: not decoded

    def json(self) -> Any:
        body = gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        return msgspec.json.decode(body)


async def raw_request(
    port: int, target: str, headers: Headers = (), *, method: str = "GET", body: bytes = b""
) -> Reply:
    """One HTTP/1.1 request on its own connection, read with h11 (which undoes chunking, never a coding)."""
    conn = h11.Connection(h11.CLIENT)
    fields = [("Host", "127.0.0.1"), *headers]
    if body:
        fields.append(("Content-Length", str(len(body))))
    with trio.fail_after(10):  # a hang guard: the server answers on loopback at once
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            request = h11.Request(method=method, target=target, headers=fields)
            await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            response: h11.Response | None = None
            data = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
    assert response is not None
    merged: dict[str, str] = {}
    for name, value in response.headers:
        key = name.decode().lower()
        merged[key] = f"{merged[key]}, {value.decode()}" if key in merged else value.decode()
    return Reply(response.status_code, merged, bytes(data))


def varies(reply: Reply) -> bool:
    return "accept-encoding" in [name.strip().lower() for name in reply.headers.get("vary", "").split(",")]


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> str:
    return await signup_and_login(client, "alice")


@pytest.fixture
async def history_room(client: httpx.AsyncClient, running: RunningServer, alice: str) -> str:
    """A room with 100 stored messages: the frontend's history page (contract §1.3-10)."""
    room = await create_room(client, alice, "history")
    await post_messages(running, room["roomId"], "alice", festive(100))
    room_id: str = room["roomId"]
    return room_id


# -- REST ------------------------------------------------------------------------------------------------
async def test_history_page_is_gzipped_and_decodes_to_the_identity_body(
    running: RunningServer, alice: str, history_room: str
) -> None:
    target = f"/api/chatrooms/{history_room}/messages"
    auth = ("Authorization", f"Bearer {alice}")
    plain = await raw_request(running.port, target, [auth])
    packed = await raw_request(running.port, target, [auth, ("Accept-Encoding", "gzip, deflate")])
    assert plain.status == packed.status == 200
    assert "content-encoding" not in plain.headers
    assert varies(plain)  # sent as identity, but the same URL is gzipped for others: caches must key on it
    assert packed.headers["content-encoding"] == "gzip"
    assert varies(packed)
    assert packed.headers["content-type"] == "application/json; charset=utf-8"
    assert int(packed.headers["content-length"]) == len(packed.body)
    assert int(plain.headers["content-length"]) == len(plain.body)
    assert gzip.decompress(packed.body) == plain.body
    assert len(msgspec.json.decode(plain.body)) == 100
    # A size, not a time: 100 history rows (~240 bytes each, mostly repeated keys, room id, sender) shrink ≥ 5x.
    assert len(plain.body) >= 5 * len(packed.body), (len(plain.body), len(packed.body))


@pytest.mark.parametrize(
    "accept",
    ["identity", "gzip;q=0", "gzip;q=0, *", "br", "deflate", "", "identity, gzip;q=0.5", "*;q=0", "gzip;q=2"],
)
async def test_history_page_as_identity_when_gzip_is_not_preferred(
    running: RunningServer, alice: str, history_room: str, accept: str
) -> None:
    reply = await raw_request(
        running.port,
        f"/api/chatrooms/{history_room}/messages",
        [("Authorization", f"Bearer {alice}"), ("Accept-Encoding", accept)],
    )
    assert reply.status == 200
    assert "content-encoding" not in reply.headers
    assert varies(reply)
    assert len(msgspec.json.decode(reply.body)) == 100


@pytest.mark.parametrize("accept", ["GZIP", "gzip ;  q=0.3 ,identity;q=0.2", "x-gzip", "*", "identity;q=0, gzip"])
async def test_accept_encoding_spellings_that_take_gzip(
    running: RunningServer, alice: str, history_room: str, accept: str
) -> None:
    reply = await raw_request(
        running.port,
        f"/api/chatrooms/{history_room}/messages",
        [("Authorization", f"Bearer {alice}"), ("Accept-Encoding", accept)],
    )
    assert reply.headers["content-encoding"] == "gzip"
    assert len(reply.json()) == 100


async def test_accept_encoding_over_two_header_lines(running: RunningServer, alice: str, history_room: str) -> None:
    reply = await raw_request(
        running.port,
        f"/api/chatrooms/{history_room}/messages",
        [("Authorization", f"Bearer {alice}"), ("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")],
    )
    assert reply.headers["content-encoding"] == "gzip"


async def test_small_bodies_and_head_are_not_compressed(running: RunningServer, alice: str, history_room: str) -> None:
    gzip_ok = ("Accept-Encoding", "gzip")
    health = await raw_request(running.port, "/health", [gzip_ok])
    assert health.status == 200
    assert "content-encoding" not in health.headers  # 55 bytes: under the 1024-byte threshold
    assert varies(health)
    error = await raw_request(running.port, "/api/chatrooms", [gzip_ok])
    assert error.status == 401
    assert "content-encoding" not in error.headers
    head = await raw_request(
        running.port,
        f"/api/chatrooms/{history_room}/messages",
        [gzip_ok, ("Authorization", f"Bearer {alice}")],
        method="HEAD",
    )
    assert head.status == 200
    assert head.body == b""
    assert "content-encoding" not in head.headers  # the headers describe the identity body


async def test_preflight_keeps_its_vary(running: RunningServer) -> None:
    reply = await raw_request(
        running.port,
        "/api/chatrooms",
        [("Accept-Encoding", "gzip"), ("Access-Control-Request-Headers", "authorization")],
        method="OPTIONS",
    )
    assert reply.status == 204
    assert reply.headers["vary"] == "Access-Control-Request-Headers"  # no body: nothing varies by coding
    assert "content-encoding" not in reply.headers


async def test_requests_and_httpx_decode_transparently(
    running: RunningServer, client: httpx.AsyncClient, alice: str, history_room: str
) -> None:
    import requests  # noqa: PLC0415 - the load test's REST client; sync, so it runs in a thread

    url = f"{running.url}/api/chatrooms/{history_room}/messages"

    def fetch() -> requests.Response:
        with requests.Session() as session:
            return session.get(url, headers=bearer(alice), timeout=10)

    r = await trio.to_thread.run_sync(fetch)
    assert r.headers["Content-Encoding"] == "gzip"  # requests asks for gzip by default
    assert [row["seq"] for row in r.json()] == list(range(1, 101))
    r2 = await client.get(url, headers=bearer(alice))
    assert r2.headers["content-encoding"] == "gzip"
    assert r2.json() == r.json()


# -- static files --------------------------------------------------------------------------------------------
async def test_static_file_gzipped_once_with_its_own_etag(running: RunningServer) -> None:
    target = "/web/vendor/socket.io.esm.min.js"
    original = (WEB_DIR / "vendor" / "socket.io.esm.min.js").read_bytes()
    plain = await raw_request(running.port, target)
    packed = await raw_request(running.port, target, [("Accept-Encoding", "gzip, deflate, br")])
    assert plain.body == original
    assert packed.headers["content-encoding"] == "gzip"
    assert gzip.decompress(packed.body) == original
    assert int(packed.headers["content-length"]) == len(packed.body) < len(original) / 2
    assert varies(plain)
    assert varies(packed)
    etag, gz_etag = plain.headers["etag"], packed.headers["etag"]
    assert gz_etag == etag[:-1] + '-gzip"'
    # Each representation revalidates with its own validator; the other's is a miss (a full 200).
    gzip_ok = ("Accept-Encoding", "gzip")
    hit = await raw_request(running.port, target, [gzip_ok, ("If-None-Match", gz_etag)])
    assert (hit.status, hit.body, hit.headers["etag"]) == (304, b"", gz_etag)
    assert varies(hit)
    miss = await raw_request(running.port, target, [gzip_ok, ("If-None-Match", etag)])
    assert miss.status == 200
    assert miss.headers["content-encoding"] == "gzip"
    plain_hit = await raw_request(running.port, target, [("If-None-Match", etag)])
    assert plain_hit.status == 304
    plain_miss = await raw_request(running.port, target, [("If-None-Match", gz_etag)])
    assert plain_miss.status == 200
    assert plain_miss.body == original
    # The precompressed body is not compressed a second time on the way out.
    assert gzip.decompress(packed.body) == original


def test_load_files_compresses_once_what_is_worth_it(tmp_path: Path) -> None:
    (tmp_path / "big.js").write_text("export const x = 1;\n" * 200)
    (tmp_path / "small.css").write_text("body { margin: 0 }")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG" + bytes(4000))
    files = load_files(tmp_path, compress_threshold=1024)
    big = files["big.js"]
    assert set(big.coded) == {"gzip"}
    data, etag = big.representation("gzip")
    assert gzip.decompress(data) == big.body
    assert etag == big.etag[:-1] + '-gzip"'
    assert big.representation("identity") == (big.body, big.etag)
    assert files["small.css"].coded == {}  # under the threshold
    assert files["logo.png"].coded == {}  # not a compressible type
    assert load_files(tmp_path)["big.js"].coded == {}  # compression off


# -- the setting -------------------------------------------------------------------------------------------
@pytest.fixture
async def uncompressed(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_server(nursery, make_config(tmp_path / "off.db", http_compression="off"))
    yield server
    await server.stop()


async def history_and_web_file(server: RunningServer, user: str) -> tuple[Reply, Reply]:
    """A 100-message history page and the vendored socket.io client, both asked for with gzip allowed."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        token = await signup_and_login(http, user)
        room = await create_room(http, token, f"{user}'s room")
    await post_messages(server, room["roomId"], user, festive(100))
    gzip_ok = ("Accept-Encoding", "gzip")
    history = await raw_request(
        server.port, f"/api/chatrooms/{room['roomId']}/messages", [gzip_ok, ("Authorization", f"Bearer {token}")]
    )
    return history, await raw_request(server.port, "/web/vendor/socket.io.esm.min.js", [gzip_ok])


async def test_compression_off_sends_everything_as_is(uncompressed: RunningServer) -> None:
    history, web = await history_and_web_file(uncompressed, "carol")
    for reply in (history, web):
        assert reply.status == 200
        assert "content-encoding" not in reply.headers
        assert not varies(reply)
    assert len(msgspec.json.decode(history.body)) == 100


def test_settings_from_flags_and_environment() -> None:
    assert (Config().http_compression, Config().http_compression_threshold) == ("on", 1024)
    config = load_config(["--http-compression-threshold", "4096"], {"HTTP_COMPRESSION": "off"})
    assert (config.http_compression, config.http_compression_threshold) == ("off", 4096)
    config = load_config(["--http-compression", "on"], {"HTTP_COMPRESSION": "off", "HTTP_COMPRESSION_THRESHOLD": "0"})
    assert (config.http_compression, config.http_compression_threshold) == ("on", 0)
    for argv in (["--http-compression", "yes"], ["--http-compression-threshold", "-1"]):
        with pytest.raises(ConfigError, match="http_compression"):
            load_config(argv, {})


async def test_threshold_setting(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path / "t.db", http_compression_threshold=1_000_000))
    try:
        history, web = await history_and_web_file(server, "dave")
        for reply in (history, web):  # both under a 1 MB threshold: identity, though it could be gzipped
            assert reply.status == 200
            assert "content-encoding" not in reply.headers
            assert varies(reply)
    finally:
        await server.stop()


# -- Engine.IO polling -------------------------------------------------------------------------------------
BIG = 1500  # characters of one message's content: every polling payload that carries one is over 1024 bytes


async def polling_get(port: int, target: str, accept: str | None) -> Reply:
    headers = [("Accept-Encoding", accept)] if accept is not None else []
    reply = await raw_request(port, target, headers)
    assert reply.status == 200, reply
    return reply


def payload_text(reply: Reply) -> str:
    body = gzip.decompress(reply.body) if reply.headers.get("content-encoding") == "gzip" else reply.body
    return body.decode()


async def test_polling_payload_of_queued_messages_is_gzipped(running: RunningServer, client: httpx.AsyncClient) -> None:
    tokens = await make_users(client, ["poller", "sender"])
    room = await make_room(client, tokens["sender"], ["poller"])
    base = f"/socket.io/?EIO=4&transport=polling&token={tokens['poller']}"
    opened = await polling_get(running.port, base, "gzip")
    sid = msgspec.json.decode(payload_text(opened)[1:])["sid"]
    target = f"{base}&sid={sid}"
    posted = await raw_request(running.port, target, method="POST", body=b"40")
    assert posted.status == 200
    assert payload_text(await polling_get(running.port, target, "gzip")).startswith('40{"sid":')
    rng = random.Random(16)
    contents = [f"{i}: " + " ".join(rng.choice(_LINES) for _ in range(BIG // 20))[:BIG] for i in range(12)]
    await send_and_read_back(running, tokens["sender"], room, contents)
    received: list[str] = []
    replies: list[Reply] = []
    while len(received) < len(contents):
        reply = await polling_get(running.port, target, "gzip, deflate")
        replies.append(reply)
        for packet in payload_text(reply).split("\x1e"):
            if packet.startswith('42["message"'):
                received.append(msgspec.json.decode(packet[2:])[1]["content"])
    assert received == contents
    carrying = [reply for reply in replies if '42["message"' in payload_text(reply)]
    assert len(carrying) < len(contents)  # queued while nobody polled: several messages per payload
    for reply in carrying:
        assert reply.headers["content-encoding"] == "gzip"
        assert reply.headers["content-type"] == "text/plain; charset=UTF-8"
        assert varies(reply)
        assert int(reply.headers["content-length"]) == len(reply.body)
    # The same session, a client that does not ask: identity (the next packet, a ping, comes within 25 s).
    await send_and_read_back(running, tokens["sender"], room, ["x" * BIG])
    plain = await polling_get(running.port, target, None)
    assert "content-encoding" not in plain.headers
    assert varies(plain)
    assert '42["message"' in plain.body.decode()


async def send_and_read_back(running: RunningServer, token: str, room: str, contents: list[str]) -> None:
    """Send ``contents`` to ``room`` over a websocket and read back the sender's own copies and acks.

    The sender is a member too: once its own copies are back, the other members' are queued beside them. The
    acks are read as well: trio-websocket holds one unread message at most, and its close would wait."""
    async with raw_client(running.url, token) as sender:
        for ack_id, content in enumerate(contents):
            await sender.emit("send_message", {"roomId": room, "content": content}, ack_id=ack_id)
        with trio.fail_after(10):
            for _ in range(2 * len(contents)):
                await sender.next_event()


async def test_python_socketio_polling_client_receives_gzipped_payloads(
    running: RunningServer, client: httpx.AsyncClient, peers: list[Peer]
) -> None:
    """The load test's client stack, held on polling: its requests session asks for gzip and decodes it."""
    tokens = await make_users(client, ["listener", "talker"])
    room = await make_room(client, tokens["talker"], ["listener"])
    listener = Peer("listener")
    peers.append(listener)
    await listener.connect(running.url, tokens["listener"], transports=["polling"])
    assert "gzip" in listener.sio.eio.http.headers["Accept-Encoding"]
    contents = [f"{i} " + "Happy New Year 🎉 " * 100 for i in range(20)]  # > 16 packets: several payloads
    await send_and_read_back(running, tokens["talker"], room, contents)
    await wait_until(lambda: len(listener.received("message")) == len(contents))
    assert [m["content"] for m in listener.received("message")] == contents
    assert listener.transport == "polling"

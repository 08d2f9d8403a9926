"""What the Socket.IO and Engine.IO conformance suites check, in our own words, against the conformance app
(``python -m tests.conformance``, docs/conformance.md): real sockets on loopback, the suites' settings."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.conformance import conformance_server
from tests.conftest import run_server

SIO = "/socket.io/?EIO=4&transport=polling"
EIO = "/engine.io/?EIO=4&transport=polling"


@pytest.fixture
async def url(nursery: trio.Nursery) -> AsyncIterator[str]:
    server = await run_server(nursery, conformance_server(0))
    yield server.url
    await server.stop()


@asynccontextmanager
async def websocket(url: str, path: str = "/socket.io/", sid: str = "") -> AsyncIterator[WebSocketConnection]:
    query = "?EIO=4&transport=websocket" + (f"&sid={sid}" if sid else "")
    async with open_websocket_url(url.replace("http", "ws") + path + query) as ws:
        try:
            if not sid:
                opened = await ws.get_message()
                assert isinstance(opened, str) and opened.startswith("0")
            yield ws
        finally:
            await ws._stream.aclose()  # trio-websocket 0.12 leaves it open when the server closes first


async def receive(ws: WebSocketConnection) -> str | bytes:
    """The next message that is not a ping (pings are answered: the heartbeat is 300 ms)."""
    with trio.fail_after(5):
        while True:
            message = await ws.get_message()
            if message != "2":
                return message
            await ws.send_message("3")


async def connected(ws: WebSocketConnection, packet: str = "40") -> str:
    """Send a CONNECT, check the reply, return the auth event that follows."""
    await ws.send_message(packet)
    reply = await receive(ws)
    namespace = packet[2:].split(",", 1)[0] if packet.startswith("40/") else ""
    prefix = "40" + (namespace + "," if namespace else "")
    assert isinstance(reply, str) and reply.startswith(prefix)
    assert list(msgspec.json.decode(reply[len(prefix) :])) == ["sid"]
    auth = await receive(ws)
    assert isinstance(auth, str)
    return auth


async def closed(ws: WebSocketConnection) -> bool:
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            return True


async def polling_session(http: httpx.AsyncClient, path: str) -> str:
    r = await http.get(path)
    assert r.status_code == 200
    sid: str = msgspec.json.decode(r.text[1:])["sid"]
    return sid


# -- Socket.IO: namespaces ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("connect", "auth"),
    [
        ("40", '42["auth",{}]'),
        ('40{"token":"123"}', '42["auth",{"token":"123"}]'),
        ("40/custom,", '42/custom,["auth",{}]'),
        ("40/custom", '42/custom,["auth",{}]'),
        ('40/custom,{"token":"abc"}', '42/custom,["auth",{"token":"abc"}]'),
    ],
)
async def test_each_namespace_accepts_a_connect_and_hands_the_app_its_payload(
    url: str, connect: str, auth: str
) -> None:
    async with websocket(url) as ws:
        assert await connected(ws, connect) == auth


async def test_a_connect_to_a_namespace_nobody_serves_is_refused_with_connect_error(url: str) -> None:
    async with websocket(url) as ws:
        await ws.send_message("40/random")
        assert await receive(ws) == '44/random,{"message":"Invalid namespace"}'


async def test_a_client_leaves_one_namespace_and_keeps_the_other(url: str) -> None:
    async with websocket(url) as ws:
        await connected(ws)
        await connected(ws, "40/custom")
        await ws.send_message("41/custom")
        await ws.send_message('42/custom,["message","lost"]')
        await ws.send_message('42["message","to main"]')
        assert await receive(ws) == '42["message-back","to main"]'


async def test_after_leaving_the_main_namespace_only_pings_come(url: str) -> None:
    async with websocket(url) as ws:
        await connected(ws)
        await ws.send_message("41")
        await ws.send_message('42["message","nobody hears"]')
        with trio.fail_after(5):
            assert await ws.get_message() == "2"


@pytest.mark.parametrize("packet", ["4abc", "42{}", '42abc["message-with-ack",1]', "42[1]", "4"])
async def test_a_malformed_socketio_packet_closes_the_connection(url: str, packet: str) -> None:
    async with websocket(url) as ws:
        await connected(ws)
        await ws.send_message(packet)
        assert await closed(ws)


async def test_a_session_that_never_connects_is_closed_after_the_connect_timeout(url: str) -> None:
    async with websocket(url) as ws:
        assert await closed(ws)


# -- Socket.IO: events, acks, attachments -----------------------------------------------------------------
async def test_events_and_acks_carry_any_arguments(url: str) -> None:
    async with websocket(url) as ws:
        await connected(ws)
        await ws.send_message('42["message",1,"2",{"3":[true]},null]')
        assert await receive(ws) == '42["message-back",1,"2",{"3":[true]},null]'
        await ws.send_message('42456["message-with-ack",1,"2",{"3":[false]}]')
        assert await receive(ws) == '43456[1,"2",{"3":[false]}]'
        await ws.send_message('42/custom,["message",1]')  # not connected to /custom: ignored
        await ws.send_message('42["message"]')
        assert await receive(ws) == '42["message-back"]'


async def test_binary_attachments_come_back_in_order_on_an_event_and_an_ack(url: str) -> None:
    placeholders = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}'
    async with websocket(url) as ws:
        await connected(ws)
        await ws.send_message(f'452-["message",{placeholders}]')
        await ws.send_message(b"\x01\x02\x03")
        await ws.send_message(b"\x04\x05\x06")
        assert [await receive(ws) for _ in range(3)] == [
            f'452-["message-back",{placeholders}]',
            b"\x01\x02\x03",
            b"\x04\x05\x06",
        ]
        await ws.send_message(f'452-789["message-with-ack",{placeholders}]')
        await ws.send_message(b"\x07")
        await ws.send_message(b"")
        assert [await receive(ws) for _ in range(3)] == [f"462-789[{placeholders}]", b"\x07", b""]


async def test_binary_attachments_over_polling_are_base64(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        sid = await polling_session(http, SIO)
        assert (await http.post(f"{SIO}&sid={sid}", content=b"40")).text == "ok"
        assert (await http.get(f"{SIO}&sid={sid}")).text.endswith('42["auth",{}]')
        body = '451-["message",{"_placeholder":true,"num":0}]\x1eb' + base64.b64encode(b"\xff\x00").decode()
        assert (await http.post(f"{SIO}&sid={sid}", content=body.encode())).text == "ok"
        r = await http.get(f"{SIO}&sid={sid}")
        assert r.text.split("\x1e") == ['451-["message-back",{"_placeholder":true,"num":0}]', "b/wA="]


@pytest.mark.parametrize(
    ("header", "attachments"),
    [
        ('4511-["message"]', []),  # more attachments than allowed (10)
        ('451-["message",{"_placeholder":true,"num":1}]', [b"x"]),  # a placeholder naming no attachment
        ('452-["message"]', [b"x" * 600_000, b"y" * 600_000]),  # together over maxPayload
        ('452-["message"]', [b"x", '42["message"]']),  # text where an attachment was due
    ],
)
async def test_a_bad_binary_packet_closes_that_connection_only(
    url: str, header: str, attachments: list[bytes | str]
) -> None:
    async with websocket(url) as bystander, websocket(url) as ws:
        await connected(bystander)
        await connected(ws)
        await ws.send_message(header)
        for attachment in attachments:
            await ws.send_message(attachment)
        assert await closed(ws)
        await bystander.send_message('42["message","still here"]')
        assert await receive(bystander) == '42["message-back","still here"]'


# -- Engine.IO: the echo app on /engine.io/ ---------------------------------------------------------------------
async def test_the_engineio_echo_returns_text_and_binary_packets_over_polling(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        sid = await polling_session(http, EIO)
        body = "4hello\x1e4test2\x1ebAQIDBA=="
        r = await http.post(f"{EIO}&sid={sid}", content=body.encode())
        assert r.status_code == 200 and r.text == "ok"
        assert (await http.get(f"{EIO}&sid={sid}")).text == body


async def test_the_engineio_echo_returns_text_and_binary_frames_over_websocket(url: str) -> None:
    async with websocket(url, "/engine.io/") as ws:
        await ws.send_message("4hello")
        assert await receive(ws) == "4hello"
        await ws.send_message(b"\x01\x02\x03\x04")
        assert await receive(ws) == b"\x01\x02\x03\x04"
        await ws.send_message("abc")  # not an Engine.IO packet
        assert await closed(ws)


async def test_the_engineio_echo_has_no_connect_timeout_and_keeps_echoing_after_an_upgrade(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        sid = await polling_session(http, EIO)
        async with websocket(url, "/engine.io/", sid) as ws:
            await ws.send_message("2probe")
            assert await receive(ws) == "3probe"
            assert (await http.get(f"{EIO}&sid={sid}")).text == "6"
            await ws.send_message("5")
            with trio.move_on_after(1.2):  # past Socket.IO's connect timeout (1 s): Engine.IO alone has none
                await receive(ws)  # answering pings
            await ws.send_message("4hello")
            assert await receive(ws) == "4hello"
            assert (await http.get(f"{EIO}&sid={sid}")).status_code == 400

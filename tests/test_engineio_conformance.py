"""Engine.IO deviations from issue 21, checked as the engine.io-protocol test suite checks them: a real server,
real sockets on loopback, its server settings (pingInterval 300 ms, pingTimeout 200 ms, connect timeout 1 s)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.conftest import RunningServer, make_config, start_server
from tests.sio_peer import wait_until

EIO = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture
async def suite(nursery: trio.Nursery, db_path: Path) -> AsyncIterator[RunningServer]:
    config = make_config(db_path, ping_interval=0.3, ping_timeout=0.2, connect_timeout=1.0)
    server = await start_server(nursery, config)
    yield server
    await server.stop()


async def open_polling(http: httpx.AsyncClient) -> str:
    r = await http.get(EIO)
    assert r.status_code == 200 and r.text.startswith("0"), r.text
    sid: str = msgspec.json.decode(r.text[1:])["sid"]
    return sid


async def start_waiting_poll(
    nursery: trio.Nursery, http: httpx.AsyncClient, suite: RunningServer, sid: str, got: list[httpx.Response]
) -> None:
    """A GET that the server holds (nothing to send yet); its answer lands in ``got``."""

    async def poll() -> None:
        got.append(await http.get(f"{EIO}&sid={sid}"))

    nursery.start_soon(poll)
    await wait_until(lambda: suite.server.hub.sessions[sid].poll_pending)


async def test_1_a_handshake_with_another_method_is_400_bad_handshake_method(suite: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as http:
        r = await http.put(EIO)
    assert r.status_code == 400
    assert r.json() == {"code": 2, "message": "Bad handshake method"}


async def test_2_a_session_whose_ping_timed_out_is_gone(suite: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as http:
        sid = await open_polling(http)
        # Ping at 0.3 s after the open, unanswered; closed at 0.3 + 0.2 = 0.5 s. The sleep lets that time pass
        # (as the reference suite does); whether the heartbeat task has woken yet does not matter.
        await trio.sleep(0.5)
        r = await http.get(f"{EIO}&sid={sid}")
    assert r.status_code == 400 and r.json()["code"] == 1


async def test_3_a_waiting_poll_ends_with_a_noop_when_the_client_closes(suite: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as http:
        sid = await open_polling(http)
        got: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            await start_waiting_poll(nursery, http, suite, sid, got)
            r = await http.post(f"{EIO}&sid={sid}", content=b"1")
            assert r.status_code == 200
        assert got[0].status_code == 200 and got[0].text == "6"
        assert (await http.get(f"{EIO}&sid={sid}")).status_code == 400


async def test_3_a_waiting_poll_ends_with_a_noop_when_an_upgrade_happens(suite: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as http:
        sid = await open_polling(http)
        got: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            await start_waiting_poll(nursery, http, suite, sid, got)
            url = suite.url.replace("http", "ws") + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
            async with open_websocket_url(url) as ws:
                await ws.send_message("2probe")
                assert await ws.get_message() == "3probe"
                await wait_until(lambda: bool(got))
                await ws.send_message("5")
                await ws.send_message("40")
                assert str(await ws.get_message()).startswith("4")
        assert got[0].status_code == 200 and got[0].text == "6"


async def test_4_a_second_websocket_for_an_upgraded_session_is_accepted_and_closed(suite: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as http:
        sid = await open_polling(http)
    url = suite.url.replace("http", "ws") + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
    async with open_websocket_url(url) as first:
        await first.send_message("2probe")
        assert await first.get_message() == "3probe"
        await first.send_message("5")
        await first.send_message("40")
        assert str(await first.get_message()).startswith("44")  # no token; the session stays upgraded
        stream = await trio.open_tcp_stream("127.0.0.1", suite.port)
        await stream.send_all(
            f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        reply = b""
        with trio.fail_after(10):
            while not reply.endswith(b"\x88\x02\x03\xe8"):  # a close frame, code 1000
                chunk = await stream.receive_some(4096)
                assert chunk, reply
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 101")
        await stream.aclose()


async def test_5_three_pings_on_polling_before_the_connect_timeout(suite: RunningServer) -> None:
    # Pings are due at 0.3, 0.6 and 0.9 s after the open (each pong comes back within a loopback round trip);
    # the connect timeout fires at 1.0 s. Before the fix the third poll got a close.
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as http:
        sid = await open_polling(http)
        for _ in range(3):
            r = await http.get(f"{EIO}&sid={sid}")
            assert (r.status_code, r.text) == (200, "2")
            assert (await http.post(f"{EIO}&sid={sid}", content=b"3")).status_code == 200

"""Engine.IO long-polling for the load generator, behind the stream calls ``Client`` makes of a websocket.

``Client`` writes websocket frames and scans received bytes with regexes. Here each written frame (our own
``client_frame``: zero mask key) becomes one packet of a POST body, and ``receive_some`` is one long-poll GET
whose body (packets joined by ``\\x1e``) holds the same JSON text a websocket would carry, so the same regexes
find messages and acks in it. Pings are answered here, since a polling ping is a packet, not a frame.
Engine.IO forbids two POSTs in flight for one session (Node's server closes the session), hence the lock.
"""

from __future__ import annotations

import contextlib
import struct

import httpx
import msgspec
import trio

_SEPARATOR = b"\x1e"


def frame_payloads(data: bytes) -> list[bytes]:
    """The payloads of concatenated client frames as ``client_frame`` makes them (FIN, text, zero mask key)."""
    payloads = []
    i = 0
    while i < len(data):
        length = data[i + 1] & 0x7F
        start = i + 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, start)
            start += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, start)
            start += 8
        start += 4  # the mask key, all zero: the payload is in the clear
        payloads.append(data[start : start + length])
        i = start + length
    return payloads


class PollingStream(trio.abc.Stream):
    def __init__(self, http: httpx.AsyncClient, sid: str) -> None:
        self._http = http
        self._params = {"EIO": "4", "transport": "polling", "sid": sid}
        self._post_lock = trio.Lock()
        self._pending = b""
        self._closed = False

    @classmethod
    async def connect(cls, host: str, port: int, token: str) -> PollingStream:
        http = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=httpx.Timeout(120, connect=30))
        try:
            r = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling", "token": token})
            _expect(r.status_code == 200 and r.content.startswith(b"0{"), f"handshake: {r.status_code} {r.content!r}")
            stream = cls(http, msgspec.json.decode(r.content[1:])["sid"])
            await stream._post([b"40"])
            while not await stream._connected():
                pass
        except BaseException:
            await http.aclose()
            raise
        return stream

    async def _connected(self) -> bool:
        """One poll of the CONNECT answer: True once it came (what follows it is kept for the first read)."""
        packets = (await self._poll()).split(_SEPARATOR)
        for i, packet in enumerate(packets):
            _expect(not packet.startswith(b"44"), f"CONNECT refused: {packet!r}")
            if packet.startswith(b"40"):
                self._pending = _SEPARATOR.join(packets[i + 1 :])
                return True
        _expect(not self._closed, "session closed before CONNECT was answered")
        return False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._post(frame_payloads(bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._closed:
            return b""
        return await self._poll()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with trio.move_on_after(1), contextlib.suppress(httpx.HTTPError, trio.BrokenResourceError):
                await self._post([b"1"])
        await self._http.aclose()

    async def _poll(self) -> bytes:
        """One long-poll GET; answers any ping in it. A closed session reads as end of stream (b"")."""
        try:
            r = await self._http.get("/socket.io/", params=self._params)
        except httpx.HTTPError as exc:
            raise trio.BrokenResourceError(f"poll failed: {exc!r}") from exc
        if r.status_code != 200:
            self._closed = True
            return b""
        body = r.content
        packets = body.split(_SEPARATOR)
        if b"1" in packets:  # the server closed the session
            self._closed = True
        if b"2" in packets:
            await self._post([b"3"])
        return body

    async def _post(self, packets: list[bytes]) -> None:
        async with self._post_lock:
            try:
                r = await self._http.post(
                    "/socket.io/",
                    params=self._params,
                    content=_SEPARATOR.join(packets),
                    headers={"Content-Type": "text/plain;charset=UTF-8"},
                )
            except httpx.HTTPError as exc:
                raise trio.BrokenResourceError(f"post failed: {exc!r}") from exc
            if r.status_code != 200:
                raise trio.BrokenResourceError(f"post refused: {r.status_code} {r.content[:200]!r}")


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ConnectionError(f"polling: {what[:300]}")

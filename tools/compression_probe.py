"""Measure HTTP compression on the largest bodies the server sends, and whether it stalls the event loop.

    .venv/bin/python -m tools.compression_probe                      # load-test-sized messages
    .venv/bin/python -m tools.compression_probe --content-chars 10000  # the largest content allowed

Bodies: a history page of 1000 messages (``limit`` is at most 1000, contract §8: the largest REST body) and a
polling payload of 16 such messages (a polling GET carries at most 16 packets, contract §3.6-6).

The server runs in this process's trio loop beside a ping task that sleeps 1 ms and records how late it woke:
the worst lateness is the longest the loop was blocked. The HTTP client is a child process (``--client``,
stdlib ``http.client``, which decodes nothing), so its work never holds this process's GIL. Three modes:
``off`` (``--http-compression off``), ``thread`` (as shipped), ``inline`` (the worker-thread cut-off raised past
every body: what the thread saves). Loopback only, a few requests per mode: seconds of CPU, not a benchmark.

Measured on a shared 2-core machine (worst lateness is noisy there: a few ms of it are other processes), worst
lateness while the gzip-accepting requests ran / while the identity ones ran:

    --content-chars 10000: 1000 rows, 10.9 MB -> 1.90 MB (5.7x), compress 102-107 ms
        off     69.5 ms / 16.1 ms   (the first requests read the rows cold; nothing is compressed)
        thread  11.2 ms /  9.3 ms   (as shipped)
        inline 134.5 ms / 15.7 ms   (the compression itself, on the loop)
      polling, 16 of those messages: 163 KB -> 29 KB, compress 1.5 ms (threaded), worst 1.1 ms
    default (60 characters): 1000 rows 223 KB -> 27.7 KB, compress 1.2 ms; --page 100: 22.2 KB -> 3.2 KB
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from protocol.content_coding import DYNAMIC_LEVEL, gzip_compress
from server import http_compression
from server.config import Config
from server.service import MinitalkServer
from storage.ids import new_id
from storage.records import NewMessage
from storage.timefmt import iso_utc
from tests.conftest import RunningServer, run_server
from tests.raw_client import raw_client
from tests.sio_peer import make_room, make_users

PAGE = 1000  # history's largest limit, the default --page
POLL_PACKETS = 16  # python-engineio's cap per polling payload
PING_S = 0.001
_WORDS = [
    *("happy", "new", "year", "fireworks", "river", "countdown", "champagne", "everyone", "resolutions", "see"),
    *("you", "next", "midnight", "party", "friends", "family", "wishes", "hello", "again", "tonight", "cheers"),
    *("🎉", "🎆", "🥂", "✨"),
]


def content(rng: random.Random, chars: int, worker: int) -> str:
    text = f"[Worker-{worker}] "
    while len(text) < chars:
        text += rng.choice(_WORDS) + " "
    return text[:chars]


class LoopWatch:
    """The longest the trio loop was blocked since the last reset: how late a 1 ms sleep woke, at worst."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(PING_S)
            self.worst = max(self.worst, trio.current_time() - start - PING_S)


# -- the client (a child process) ---------------------------------------------------------------------------
def _get(port: int, target: str, accept: str | None, token: str = "") -> tuple[bytes, str | None, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept-Encoding": accept} if accept else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    body = response.read()
    seconds = time.perf_counter() - started
    conn.close()
    assert response.status == 200, (response.status, body[:200])
    return body, response.getheader("Content-Encoding"), seconds


def client_main(port: int, target: str, token: str, rounds: int, accept: str) -> None:
    """GET ``target`` ``rounds`` times with ``accept`` ("-": no Accept-Encoding); one JSON line of sizes, timings."""
    replies = [_get(port, target, None if accept == "-" else accept, token) for _ in range(rounds)]
    body, coding, _ = replies[-1]
    identity = zlib.decompress(body, wbits=31) if coding == "gzip" else body
    print(
        json.dumps(
            {
                "identity_bytes": len(identity),
                "sent_bytes": len(body),
                "coding": coding,
                "compress_s": compress_seconds(identity),
                "request_s": statistics.median(s for _, _, s in replies),
            }
        ),
        flush=True,
    )


def poll_client_main(port: int, token: str) -> None:
    """Open a polling session, say ``ready``, wait for a line on stdin, then GET the queued payload once."""
    base = f"/socket.io/?EIO=4&transport=polling&token={token}"
    opened, _, _ = _get(port, base, None)
    target = f"{base}&sid={json.loads(opened[1:])['sid']}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", target, body=b"40", headers={"Content-Type": "text/plain;charset=UTF-8"})
    conn.getresponse().read()
    conn.close()
    _get(port, target, "gzip")  # the CONNECT ack
    print("ready", flush=True)
    sys.stdin.readline()
    body, coding, seconds = _get(port, target, "gzip, deflate")
    identity = zlib.decompress(body, wbits=31) if coding == "gzip" else body
    packets = identity.split(b"\x1e")
    print(
        json.dumps(
            {
                "identity_bytes": len(identity),
                "sent_bytes": len(body),
                "coding": coding,
                "packets": len(packets),
                "compress_s": compress_seconds(identity),
                "request_s": seconds,
            }
        ),
        flush=True,
    )


# -- the server side ----------------------------------------------------------------------------------------
async def run_child(args: list[str], watch: LoopWatch) -> dict[str, Any]:
    """One client child's result, with the loop's worst lateness while it ran."""
    watch.worst = 0.0
    done = await trio.run_process([sys.executable, "-m", "tools.compression_probe", *args], capture_stdout=True)
    result: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    result["loop_worst_s"] = watch.worst
    return result


async def history_rounds(port: int, target: str, token: str, rounds: int, watch: LoopWatch) -> dict[str, Any]:
    """The page asked for with gzip, then without: the loop's worst while each ran, apart."""
    client = ["--client", str(port), target, token, str(rounds)]
    gz = await run_child([*client, "gzip, deflate"], watch)
    plain = await run_child([*client, "-"], watch)
    assert gz["identity_bytes"] == plain["sent_bytes"]
    return {
        **{key: gz[key] for key in ("identity_bytes", "sent_bytes", "coding", "compress_s")},
        "gzip_request_s": gz["request_s"],
        "identity_request_s": plain["request_s"],
        "loop_worst_gzip_s": gz["loop_worst_s"],
        "loop_worst_identity_s": plain["loop_worst_s"],
    }


async def poll_round(
    server: RunningServer, *, tokens: dict[str, str], room: str, texts: list[str], watch: LoopWatch
) -> Any:
    args = [sys.executable, "-m", "tools.compression_probe", "--poll-client", str(server.port), tokens["reader"]]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(trio.run_process, args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        lines = b""
        while b"ready" not in lines:
            lines += await proc.stdout.receive_some()
        async with raw_client(server.url, tokens["writer"]) as writer:
            for ack_id, text in enumerate(texts):
                await writer.emit("send_message", {"roomId": room, "content": text}, ack_id=ack_id)
            events: list[str] = []  # the writer's own copies and acks: then the reader's copies are queued too
            while events.count("message") < len(texts) or sum(e.startswith("ack:") for e in events) < len(texts):
                events.append((await writer.next_event())[0])
        watch.worst = 0.0
        await proc.stdin.send_all(b"go\n")
        while not lines.rstrip().endswith(b"}"):
            lines += await proc.stdout.receive_some()
        result: dict[str, Any] = json.loads(lines.decode().splitlines()[-1])
        result["loop_worst_s"] = watch.worst
    return result


def compress_seconds(body: bytes) -> float:
    """The best of five: the cost of compressing this body at the server's level, with the least scheduling noise."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        gzip_compress(body, DYNAMIC_LEVEL)
        best = min(best, time.perf_counter() - started)
    return best


async def measure(mode: str, chars: int, rounds: int, page: int) -> dict[str, Any]:
    db = Path(tempfile.mkdtemp()) / "probe.db"
    config = Config(
        port=0,
        database=f"sqlite:///{db}",
        bcrypt_rounds=4,
        bcrypt_batch_rounds=4,
        http_compression="off" if mode == "off" else "on",
        max_content_chars=max(chars, 10_000),
        message_rate=0,
        shutdown_timeout=2.0,
    )
    http_compression.THREAD_MIN_BYTES = 1 << 62 if mode == "inline" else 64 * 1024
    watch = LoopWatch()
    async with trio.open_nursery() as nursery:
        server = await run_server(nursery, MinitalkServer(config))
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            tokens = await make_users(http, ["reader", "writer"])
            room = await make_room(http, tokens["writer"], ["reader"])
            # Polling gets a room of its own: the history room's stored rows would reach it as catch-up.
            live_room = await make_room(http, tokens["writer"], ["reader"], name="live")
        rng = random.Random(1)
        now = time.time()
        ms = int(now * 1000)
        rows = [
            NewMessage(new_id(ms), room, "writer", content(rng, chars, i % 30), iso_utc(now), ms) for i in range(page)
        ]
        for start in range(0, page, 250):
            await server.server.storage.append_messages(rows[start : start + 250])
        nursery.start_soon(watch.run)
        target = f"/api/chatrooms/{room}/messages?limit={page}"
        history = await history_rounds(server.port, target, tokens["reader"], rounds, watch)
        texts = [content(rng, chars, i) for i in range(POLL_PACKETS)]
        polling = await poll_round(server, tokens=tokens, room=live_room, texts=texts, watch=watch)
        await server.stop()
        nursery.cancel_scope.cancel()
    return {"mode": mode, "history": history, "polling": polling}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.compression_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--content-chars", type=int, default=60, help="characters per message (default 60)")
    parser.add_argument("--page", type=int, default=PAGE, help=f"messages in the history page (default {PAGE})")
    parser.add_argument("--rounds", type=int, default=3, help="requests per coding per mode (default 3)")
    parser.add_argument("--modes", default="off,thread,inline")
    parser.add_argument(
        "--client", nargs=5, metavar=("PORT", "TARGET", "TOKEN", "ROUNDS", "ACCEPT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--poll-client", nargs=2, metavar=("PORT", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        port, target, token, rounds, accept = args.client
        client_main(int(port), target, token, int(rounds), accept)
        return
    if args.poll_client:
        poll_client_main(int(args.poll_client[0]), args.poll_client[1])
        return
    for mode in args.modes.split(","):
        print(json.dumps(trio.run(measure, mode, args.content_chars, args.rounds, args.page)), flush=True)


if __name__ == "__main__":
    main()

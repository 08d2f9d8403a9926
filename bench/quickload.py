"""A small load script for the realtime core (issue 4); the full benchmark suite builds on it.

    python -m bench.quickload ingest  --url http://127.0.0.1:4000 --senders 32 --duration 10
    python -m bench.quickload fanout  --url http://127.0.0.1:4000 --members 1000 --rate 300 --duration 10
    python -m bench.quickload latency --url http://127.0.0.1:4000 --members 100 --rate 100 --duration 10

ingest: each sender alone in its own room, a window of unacknowledged sends; counts the broadcasts that come
back (in durable mode a broadcast means committed). fanout/latency: one room, one sender on an open-loop
schedule at --rate messages/s, every member counting deliveries and sampling latency from the send time.
Only loopback targets are accepted; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from urllib.parse import urlsplit

import httpx
import trio

from bench.wsclient import Member, send_frame, stamped


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def setup(url: str, users: int, rooms: list[list[int]]) -> tuple[list[str], list[str]]:
    """Users (batch signup/login) and rooms (``rooms[i]`` = member indexes; the first creates the room)."""
    tag = secrets.token_hex(3)
    creds = [{"username": f"bench{tag}_{i}", "password": "pw"} for i in range(users)]
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for start in range(0, users, 500):
            chunk = creds[start : start + 500]
            r = await http.post("/api/auth/signup-batch", json={"users": chunk})
            r.raise_for_status()
        tokens: list[str] = []
        for start in range(0, users, 500):
            r = await http.post("/api/auth/login-batch", json={"users": creds[start : start + 500]})
            tokens += [entry["token"] for entry in r.json()["results"]]
        room_ids = []
        for members in rooms:
            body = {"name": "bench", "participants": [creds[i]["username"] for i in members[1:]]}
            r = await http.post("/api/chatrooms", json=body, headers={"Authorization": f"Bearer {tokens[members[0]]}"})
            r.raise_for_status()
            room_ids.append(r.json()["roomId"])
    return tokens, room_ids


async def connect_all(host: str, port: int, tokens: list[str]) -> list[Member]:
    members: list[Member | None] = [None] * len(tokens)
    limiter = trio.CapacityLimiter(64)

    async def one(i: int) -> None:
        async with limiter:
            members[i] = await Member.connect(host, port, tokens[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(tokens)):
            nursery.start_soon(one, i)
    return [m for m in members if m is not None]


async def ingest(url: str, senders: int, window: int, duration: float) -> dict[str, float]:
    host, port = _target(url)
    tokens, room_ids = await setup(url, senders, [[i] for i in range(senders)])
    members = await connect_all(host, port, tokens)
    sent = [0] * senders
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.receive_loop)

        async def blast(i: int) -> None:
            member = members[i]
            while True:
                room = room_ids[i]
                burst = window - (sent[i] - member.count)
                if burst > 0:
                    await member.stream.send_all(b"".join(send_frame(room, stamped("x")) for _ in range(burst)))
                    sent[i] += burst
                await trio.sleep(0.001)

        await trio.sleep(0.5)
        for i in range(senders):
            nursery.start_soon(blast, i)
        await trio.sleep(1.0)  # warm-up
        before, started = sum(m.count for m in members), time.monotonic()
        await trio.sleep(duration)
        after, elapsed = sum(m.count for m in members), time.monotonic() - started
        nursery.cancel_scope.cancel()
    latencies = [x for m in members for x in m.latencies]
    return {
        "msgs_per_s": (after - before) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def fanout(url: str, members_n: int, rate: float, duration: float) -> dict[str, float]:
    host, port = _target(url)
    tokens, (room,) = await setup(url, members_n, [list(range(members_n))])
    members = await connect_all(host, port, tokens)
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.receive_loop)
        await trio.sleep(0.5)
        sender = members[0]
        interval = 1.0 / rate
        started = time.monotonic()
        for member in members:
            member.latencies.clear()
        sent = 0
        while (now := time.monotonic()) < started + duration:
            due = int((now - started) / interval) + 1 - sent  # open loop: catch up if we fell behind
            if due > 0:
                await sender.stream.send_all(b"".join(send_frame(room, stamped("x")) for _ in range(due)))
                sent += due
            await trio.sleep_until(trio.current_time() + max(0.0, started + sent * interval - time.monotonic()))
        await trio.sleep(1.0)  # let the tail arrive
        nursery.cancel_scope.cancel()
    delivered = sum(m.count for m in members)
    latencies = [x for m in members for x in m.latencies]
    return {
        "offered_msgs_per_s": sent / duration,
        "deliveries_per_s": delivered / duration,
        "expected_deliveries": sent * len(members),
        "delivered": delivered,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise SystemExit("quickload only targets loopback addresses")
    return host, parts.port or 80


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quickload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["ingest", "fanout", "latency"])
    parser.add_argument("--url", default="http://127.0.0.1:4000")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    parser.add_argument("--senders", type=int, default=32, help="ingest: sending connections")
    parser.add_argument("--window", type=int, default=64, help="ingest: unconfirmed sends per connection")
    parser.add_argument("--members", type=int, default=1000, help="fanout/latency: room size")
    parser.add_argument("--rate", type=float, default=300.0, help="fanout/latency: messages per second")
    args = parser.parse_args()
    if args.scenario == "ingest":
        result = trio.run(ingest, args.url, args.senders, args.window, args.duration)
    else:
        result = trio.run(fanout, args.url, args.members, args.rate, args.duration)
    for key, value in result.items():
        print(f"{key:>22}: {value:,.2f}")


if __name__ == "__main__":
    main()

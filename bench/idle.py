"""``python -m bench idle-connections``: the server's memory per idle websocket connection, with and without
permessage-deflate.

For each ``--deflate-share`` given (``0,1``: none of the members offer it, then all of them), a fresh server is
started (memory a first phase freed would otherwise be reused by the second, and the second would look cheaper
than it is), users are signed up and put in rooms as the quick preset does (rooms of six members, one creator in
every room; ``--no-rooms``: no room at all), and the server's RSS is taken. Then ``--count`` members connect
over websocket (Socket.IO CONNECT answered, so each has joined its rooms), a share of them offering
permessage-deflate; they stay idle for ``--settle`` seconds, answering pings on one reader thread, and the RSS is
taken again. The difference over the connections is the figure: what an idle member costs the server, its
kernel socket buffers aside (those are not in a process's RSS).

The members connect from this process, pinned to the load generator's cores, 64 handshakes at a time; its
descriptor limit is raised to the hard limit first. If that limit, the server's ``--max-connections`` or the
``--connect-timeout`` stops it short of ``--count``, the run says how many connected and divides by that.
Loopback only, as every run of the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psutil
import trio

from bench import runner, target
from bench.client import Client, Stats
from bench.countreader import CountReader
from bench.inflate import InflatingStream
from bench.result import IdleRecord, IdleRun, git_commit, machine
from bench.scenarios import Scenario

ROOM_SIZE = 6  # members a room, the creator aside: the middle of the quick preset's 3-8
CONNECTING_AT_ONCE = 64  # handshakes in flight: enough to keep the server's core busy, few enough not to time out
RSS_SAMPLES = 5  # the median of this many reads, 0.2 s apart: one read can catch a transient allocation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=10_000, help="websocket connections to open (default 10,000)")
    parser.add_argument(
        "--deflate-share",
        default="0,1",
        help="the share of members (0-1) that offer permessage-deflate; several, comma-separated: a fresh server"
        " for each (default 0,1)",
    )
    parser.add_argument("--no-rooms", action="store_true", help="members in no room: idle right after CONNECT")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before the RSS is taken (default 5)")
    parser.add_argument(
        "--connect-timeout", type=float, default=180.0, help="seconds for every member to connect (default 180)"
    )
    parser.add_argument("--mode", choices=["durable", "fast"], default="durable")
    parser.add_argument("--url", help="a running server at this loopback URL instead of starting one (needs --pid)")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, whose RSS is measured")
    parser.add_argument("--out", type=Path, help="where the record and report go (default bench/results)")


def shares_of(text: str) -> list[float]:
    shares = [float(v) for v in text.split(",")]
    if not shares or any(not 0.0 <= s <= 1.0 for s in shares):
        raise ValueError(f"--deflate-share {text}: fractions between 0 and 1, comma-separated")
    return shares


def idle_scenario(count: int, *, rooms: bool) -> Scenario:
    """``count`` users; rooms of ROOM_SIZE consecutive users plus user 0, who creates them all (as the quick
    preset's one creator does)."""
    groups = [list(range(start, min(start + ROOM_SIZE, count))) for start in range(1, count, ROOM_SIZE)]
    return Scenario(
        "idle-connections",
        f"{count:,} idle websocket members" + (f" in rooms of {ROOM_SIZE} plus one creator" if rooms else ""),
        count,
        [[0, *group] for group in groups] if rooms else [],
        [],
        0.0,
    )


def run(args: argparse.Namespace, command: str, out: Path) -> int:
    shares = shares_of(args.deflate_share)
    if args.url and (args.pid is None or len(shares) > 1):
        raise SystemExit("idle-connections --url needs --pid, and one --deflate-share (a running server reuses memory)")
    raise_descriptor_limit()
    runs = []
    for share in shares:
        server = target.external(args.url, args.pid) if args.url else target.start_ours(args.mode)
        try:
            runs.append(
                measure(
                    server,
                    args.count,
                    share,
                    rooms=not args.no_rooms,
                    settle=args.settle,
                    timeout=args.connect_timeout,
                )
            )
        finally:
            server.stop()
        print(line(runs[-1]), flush=True)
    record = IdleRecord(
        command=command,
        git_commit=git_commit(),
        machine=machine(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        runs=runs,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = record.save(out / f"{stamp}-idle-connections.json")
    md = path.with_suffix(".md")
    md.write_text(
        f"# Idle connections: server memory per connection\n\nCommand: `{command}`  \nCommit: {record.git_commit}"
        f"\n\n{table(runs)}\n"
    )
    print(md.read_text())
    print(f"\nresults: {path}, report: {md}")
    return 0


def raise_descriptor_limit() -> int:
    """The soft descriptor limit raised to the hard one (each member is a socket); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def measure(server: target.Target, count: int, share: float, *, rooms: bool, settle: float, timeout: float) -> IdleRun:
    """One fresh server's RSS before and after ``count`` members connect and idle; ``share`` offer deflate."""
    assert server.pid is not None
    scenario = idle_scenario(count, rooms=rooms)
    tokens, _ = runner.setup(server, scenario)
    process = psutil.Process(server.pid)
    before = rss_mb(process)
    _, client_cores = target.server_cores()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, client_cores)  # the members' side on the load generator's cores, as a run's workers
    try:
        held = trio.run(_hold, server, tokens, share, Hold(settle, timeout), process)
    finally:
        os.sched_setaffinity(0, affinity)
    clients, seconds, after, errors = held
    offered = sum(_offers(i, share) for i in range(count))
    connections = len(clients)
    return IdleRun(
        deflate_share=share,
        rooms=len(scenario.rooms),
        asked=count,
        connected=connections,
        offered=offered,
        negotiated=sum(clients),
        connect_s=round(seconds, 1),
        settle_s=settle,
        rss_before_mb=round(before, 1),
        rss_after_mb=round(after, 1),
        rss_per_connection_kb=round((after - before) * 1024 / connections, 2) if connections else float("nan"),
        descriptor_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        server=server.description(),
        errors=errors[:20],
    )


def _offers(index: int, share: float) -> bool:
    """Member ``index`` offers permessage-deflate: spread evenly, as the scenarios' shares are."""
    return int((index + 1) * share) > int(index * share)


class Hold(msgspec.Struct, frozen=True):
    settle: float  # seconds idle, every member connected, before the RSS is taken
    timeout: float  # seconds for every member to connect


async def _hold(
    server: target.Target, tokens: list[str], share: float, hold: Hold, process: psutil.Process
) -> tuple[list[bool], float, float, list[str]]:
    """Connect every member, keep them idle, take the RSS; per member whether it negotiated.

    Each member goes to the reader thread as soon as it is connected, which answers the server's pings (every 25 s
    by default) while the rest connect and while they all idle.
    """
    host, port = server.host_port
    stats = Stats()
    clients: list[Client] = []
    errors: list[str] = []
    limiter = trio.CapacityLimiter(CONNECTING_AT_ONCE)
    reader = CountReader(b'"content":"', lambda _: None)
    reader.start()

    async def connect(i: int) -> None:
        async with limiter:
            try:
                client = await Client.connect(host, port, tokens[i], i, stats, deflate=_offers(i, share))
            except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
                errors.append(f"member {i}: {exc!r}"[:300])
                return
        clients.append(client)
        raw = client.socket_stream
        assert raw is not None
        inflating = client.stream if isinstance(client.stream, InflatingStream) else None
        reader.add(raw.socket.fileno(), inflating.inflater if inflating else None)

    started = time.monotonic()
    try:
        with trio.move_on_after(hold.timeout) as scope:
            async with trio.open_nursery() as nursery:
                for i in range(len(tokens)):
                    nursery.start_soon(connect, i)
        seconds = time.monotonic() - started
        if scope.cancelled_caught:
            errors.append(f"{len(tokens) - len(clients):,} members had not connected after {hold.timeout:g} s")
        await trio.sleep(hold.settle)
        after = await trio.to_thread.run_sync(rss_mb, process)
    finally:
        await trio.to_thread.run_sync(reader.stop)
        for client in clients:
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await client.stream.aclose()
    errors += reader.errors + [f"fd {fd}: closed by the server while idle" for fd in reader.closed]
    return [c.negotiated for c in clients], seconds, after, errors


def rss_mb(process: psutil.Process) -> float:
    samples: list[float] = []
    for _ in range(RSS_SAMPLES):
        samples.append(int(process.memory_info().rss) / 2**20)
        time.sleep(0.2)
    return statistics.median(samples)


def line(run: IdleRun) -> str:
    return (
        f"deflate share {run.deflate_share:g}: {run.connected:,} of {run.asked:,} connected ({run.negotiated:,} with"
        f" permessage-deflate) in {run.connect_s:g} s; RSS {run.rss_before_mb:,.1f} → {run.rss_after_mb:,.1f} MB,"
        f" {run.rss_per_connection_kb:,.2f} KB a connection"
    )


def table(runs: list[IdleRun]) -> str:
    lines = [
        "| deflate share | connected | with permessage-deflate | rooms | RSS before MB | RSS after MB"
        " | RSS per connection KB | connect s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.deflate_share:g} | {r.connected:,} of {r.asked:,} | {r.negotiated:,} | {r.rooms:,}"
            f" | {r.rss_before_mb:,.1f} | {r.rss_after_mb:,.1f} | {r.rss_per_connection_kb:,.2f} | {r.connect_s:g} |"
        )
    lines += [
        "",
        f"RSS: the server process's resident memory, the median of {RSS_SAMPLES} reads; before: users and rooms"
        " made, nobody connected; after: every member connected (Socket.IO CONNECT answered) and idle for"
        " the settle time. A fresh server for each row.",
    ]
    errors = [e for r in runs for e in r.errors]
    lines += [f"\n- error: `{e[:200]}`" for e in errors[:10]]
    return "\n".join(lines)

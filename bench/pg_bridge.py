"""What the Trio→asyncio bridge costs the PostgreSQL engine, per call and per group commit.

The same statements are timed twice on the same database: once from a plain asyncio program on one
asyncpg connection (no bridge), once through :class:`storage.postgres.engine.PostgresEngine` from Trio
(one ``aio_as_trio`` crossing per job). The difference is the bridge. Loopback only; bounded counts.

    python -m bench.pg_bridge --database postgresql://minitalk@127.0.0.1:5432/bench --rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
import trio

from bench.target import check_loopback_database
from storage.ids import new_id
from storage.postgres import store
from storage.postgres.engine import SESSION_SETTINGS, PostgresEngine
from storage.postgres.schema import migrate
from storage.records import NewMessage, RoomRecord
from storage.timefmt import iso_utc

NOW = "2026-12-31T23:59:59.000Z"


def _batch(room: str, size: int) -> list[NewMessage]:
    now_ms = int(time.time() * 1000)
    return [
        NewMessage(new_id(now_ms), room, "alice", "happy new year " * 4, iso_utc(now_ms / 1000), now_ms)
        for _ in range(size)
    ]


def _summary(label: str, samples: list[float]) -> str:
    samples.sort()
    p50 = statistics.median(samples) * 1e6
    p99 = samples[int(len(samples) * 0.99) - 1] * 1e6
    return f"{label:<34} p50 {p50:9.1f} us   p99 {p99:9.1f} us"


async def _time(rounds: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def direct(url: str, rounds: int, sizes: list[int]) -> list[str]:
    async def main() -> list[str]:
        conn = await asyncpg.connect(url, server_settings=SESSION_SETTINGS)  # as the engine's
        try:
            await migrate(conn)
            await store.prepare_writer(conn)
            room = f"bridge-direct-{new_id(0)}"
            await store.insert_rooms(conn, [RoomRecord(room, "bench", ("alice",), "alice", NOW, NOW)], "bench")
            # Warm up: plans, cache, WAL.
            await _time(rounds, lambda: store.append_messages(conn, _batch(room, 64), "bench"))
            lines = [_summary("asyncio: log_head (1 row)", await _time(rounds, lambda: store.log_head(conn)))]
            for size in sizes:
                samples = await _time(rounds, lambda: store.append_messages(conn, _batch(room, size), "bench"))  # noqa: B023
                lines.append(_summary(f"asyncio: group commit of {size}", samples))
            return lines
        finally:
            await conn.close()

    return asyncio.run(main())


def bridged(url: str, rounds: int, sizes: list[int]) -> list[str]:
    async def main() -> list[str]:
        engine = PostgresEngine(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            room = f"bridge-trio-{new_id(0)}"
            await engine.insert_rooms([RoomRecord(room, "bench", ("alice",), "alice", NOW, NOW)])
            await _time(rounds, lambda: engine.append_messages(_batch(room, 64)))  # warm up, as above
            lines = [_summary("trio via bridge: log_head (1 row)", await _time(rounds, engine.log_head))]
            for size in sizes:
                samples = await _time(rounds, lambda: engine.append_messages(_batch(room, size)))  # noqa: B023
                lines.append(_summary(f"trio via bridge: group commit of {size}", samples))
            nursery.cancel_scope.cancel()
        return lines

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--database", required=True, help="a loopback PostgreSQL URL (tables are created)")
    parser.add_argument("--rounds", type=int, default=200, help="calls timed per line (default 200)")
    parser.add_argument("--sizes", default="1,64,256,1024", help="batch sizes (default 1,64,256,1024)")
    args = parser.parse_args(argv)
    check_loopback_database(args.database)
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = max(1, min(args.rounds, 10_000))
    for line in direct(args.database, rounds, sizes) + bridged(args.database, rounds, sizes):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

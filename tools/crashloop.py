"""Kill -9 (or SIGTERM) a loaded server again and again, then count what was lost, duplicated or given a reused seq.

    .venv/bin/python -m tools.crashloop --mode fast --kills 9
    .venv/bin/python -m tools.crashloop --mode durable --kills 9 --root /path/to/other/checkout

Members of one room send with acks (``tests/chat_load.py``); after each kill the server is restarted on the
same SQLite file and the load goes on. At the end the room's history is read and compared with every ack and
every broadcast the members saw. ``--root`` runs another checkout's server (to measure before and after).
Loopback only, bounded: ``--kills`` rounds of ``--acks-per-round`` acked messages.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio

from tests import server_process
from tests.chat_load import ChatLoad, read_history
from tests.sio_peer import wait_until


async def crashloop(args: argparse.Namespace) -> dict[str, Any]:
    server_process.ROOT = args.root
    db = Path(tempfile.mkdtemp()) / "crash.db"
    server_args = ["--database", f"sqlite:///{db}", "--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4"]
    server_args += ["--delivery-mode", args.mode, "--ingest-queue", str(args.ingest_queue)]
    env = {"PYTHONPATH": str(server_process.ROOT)}
    async with trio.open_nursery() as nursery:
        server = await server_process.start_server_process(nursery, server_args, env=env)
        load = await ChatLoad.create(server.url, senders=args.senders)
        for kill in range(args.kills):
            load.url = server.url
            target = len(load.acked) + args.acks_per_round
            async with trio.open_nursery() as round_:
                round_.start_soon(partial(load.run, first=kill * 1_000_000, pace=args.pace))
                await wait_until(partial(_reached, load, target), within=60)
                if args.signal == "kill":
                    server.proc.kill()
                    await server.proc.wait()
                else:
                    await server.terminate()
            server = await server_process.start_server_process(nursery, server_args, env=env)
        rows = await read_history(server.url, load.tokens["s0"], load.room)
        await server.terminate()
        nursery.cancel_scope.cancel()
    by_seq = {row["seq"]: row["id"] for row in rows}
    by_id = {row["id"]: row["seq"] for row in rows}
    seen = load.seen
    seqs = sorted(by_seq)
    return {
        "mode": args.mode,
        "kills": args.kills,
        "sent": load.sent,
        "acked": len(load.acked),
        "acked_lost_or_moved": sum(1 for i, s in load.acked.items() if by_id.get(i) != s),
        "stored": len(rows),
        "stored_not_acked": sum(1 for row in rows if row["id"] not in load.acked),
        "stored_twice": len(rows) - len({row["content"] for row in rows}),
        "broadcast": sum(len(ids) for ids in seen.values()),
        "broadcast_not_stored": sum(1 for ids in seen.values() for i in ids if i not in by_id),
        "seqs_seen_for_two_messages": sum(
            1 for s, ids in seen.items() if len(ids | ({by_seq[s]} if s in by_seq else set())) > 1
        ),
        "gaps_in_stored_seqs": (seqs[-1] - len(seqs)) if seqs else 0,
    }


def _reached(load: ChatLoad, acked: int) -> bool:
    return len(load.acked) >= acked


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.crashloop", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["durable", "fast"], default="fast")
    parser.add_argument("--kills", type=int, default=9, help="how many times the server is stopped")
    parser.add_argument("--signal", choices=["kill", "term"], default="kill", help="kill -9, or a graceful SIGTERM")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--acks-per-round", type=int, default=2000)
    parser.add_argument("--pace", type=float, default=0.0005, help="seconds between one sender's messages")
    parser.add_argument("--ingest-queue", type=int, default=16384)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="checkout to run")
    args = parser.parse_args()
    args.root = Path(args.root).resolve()
    print(json.dumps(trio.run(crashloop, args), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

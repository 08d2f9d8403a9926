"""``python -m bench``: the command line (the commands themselves: ``bench/commands.py``). See ``--help``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench import commands, idle, recvcost, scenarios, stress
from bench import compare as compare_mod

RESULTS = Path(__file__).resolve().parent / "results"


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _at_least_zero(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def _settings(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if not values or any(v not in ("on", "off") for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text} is not on, off, or both separated by a comma (on,off)")
    return values


def _compression_flags(parser: argparse.ArgumentParser, *, ours: bool = False) -> None:
    """The scenario's message size and deflate share; ``ours``: also the setting of the server ``run`` starts."""
    parser.add_argument(
        "--deflate-share",
        type=_share,
        help="fraction of the websocket members (0-1) that offer permessage-deflate (default: the scenario's,"
        " 0.5 for large-messages, else 0)",
    )
    parser.add_argument(
        "--message-bytes",
        type=_positive_int,
        help="each message carries chat-like text of this many characters (bench/chattext.py) instead of the"
        " scenario's content (at most the server's --max-content-chars, 10,000, less the 40-60 character stamp)",
    )
    if ours:
        parser.add_argument(
            "--ws-compression",
            type=_settings,
            default=[],
            metavar="on|off|on,off",
            help="start our server with this --ws-compression; on,off: a fresh server of each setting, one report"
            " with a column per setting (default: the server's default, on)",
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="The minitalk-trio benchmark instrument.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario against our server (started fresh) or --url")
    run.add_argument(
        "scenario",
        help="tiny, light, quick, medium, strong, extreme, mega, single, multipub, ingest,"
        " fanout, slow-consumer, slow-readers, mixed, endurance, large-messages, smoke, stress",
    )
    run.add_argument(
        "--duration",
        type=float,
        help=f"seconds of load (each scenario has a default; stress: per step, default {stress.STEP_S:g})",
    )
    run.add_argument("--rate", type=float, help="messages/s (every scenario but the presets and smoke)")
    run.add_argument("--members", type=int, help="room size, for fanout and slow-consumer")
    run.add_argument("--mode", choices=["durable", "fast"], default="durable", help="our server's delivery mode")
    run.add_argument(
        "--database",
        help="our server's DATABASE_URL (default: a fresh temporary SQLite file); a loopback PostgreSQL URL"
        " benchmarks the PostgreSQL engine (its database is used as it is: give an empty one)",
    )
    run.add_argument("--url", help="benchmark a running server at this loopback URL instead of starting one")
    run.add_argument(
        "--also-url",
        action="append",
        default=[],
        help="with --url: another process of the same cluster (repeat); load workers are spread over all of them",
    )
    run.add_argument("--pid", type=int, help="with --url: the server's pid, for CPU and RSS samples")
    run.add_argument("--workers", type=int, help="load-generator processes (default: one per client core)")
    run.add_argument(
        "--profile", action="store_true", help="record the server with py-spy; flame graph beside the report"
    )
    run.add_argument("--out", type=Path, default=RESULTS, help="where results and reports go")
    run.add_argument(
        "--polling-share",
        type=_share,
        default=0.0,
        help="fraction of the members (0-1) that use Engine.IO long-polling instead of websocket (default 0)",
    )
    run.add_argument("--no-live", action="store_true", help="no live table on stderr while running")
    run.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run the scenario N times, each on a freshly started server, into one record of repeats that"
        " compare decides on (median and spread); default 1",
    )
    _slow_flags(run)
    _compression_flags(run, ours=True)
    cmp = sub.add_parser(
        "compare",
        help="compare runs of OLD and NEW; exit 1 if NEW regressed past the noise, 3 if inconclusive, 2 on a usage"
        " error",
        description=compare_mod.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument(
        "old", type=Path, nargs="?", help="a result, a record of repeats (run --repeat N) or a directory of them"
    )
    cmp.add_argument("new", type=Path, nargs="?", help="the same for the side under test")
    cmp.add_argument("--old", dest="old_files", type=Path, nargs="+", metavar="PATH", help="several OLD paths")
    cmp.add_argument("--new", dest="new_files", type=Path, nargs="+", metavar="PATH", help="several NEW paths")
    cmp.add_argument(
        "--threshold",
        type=_at_least_zero,
        help="one floor (a fraction) for every metric instead of the per-metric floors; stress records: the"
        " threshold (default 0.10)",
    )
    cmp.add_argument(
        "--spread-factor",
        type=_at_least_zero,
        default=compare_mod.SPREAD_FACTOR,
        help=f"k in threshold = max(floor, k x spread) (default {compare_mod.SPREAD_FACTOR:g})",
    )
    run.add_argument("--p99-bound", type=float, default=100.0, help="stress: delivery p99 bound in ms (default 100)")
    run.add_argument(
        "--start-rate",
        type=float,
        help=f"stress: first step in msg/s (default: {stress.START_DELIVERIES_PER_S:,.0f} deliveries/s worth)",
    )
    run.add_argument(
        "--narrow",
        type=_at_least_zero,
        default=stress.NARROW_TO,
        help="stress: after the first failing step, bisect until the fastest passing and the slowest failing rate"
        f" are within this fraction (default {stress.NARROW_TO:g}; 0: no bisection)",
    )
    run.add_argument(
        "--shape",
        default="quick",
        help="stress: the scenario whose rooms and senders the ramp scales (default quick; fanout for delivery)",
    )
    peers = sub.add_parser("peers", help="the same scenario against ours (durable, fast) and the reference peers")
    peers.add_argument("scenario", help="a scenario name as for run (the stress ramp runs with --stress)")
    peers.add_argument("--duration", type=float, help="seconds of the scenario's run (ramp steps keep their own)")
    peers.add_argument("--rate", type=float)
    peers.add_argument("--members", type=int)
    peers.add_argument(
        "--polling-share",
        type=_share,
        default=0.0,
        help="fraction of the members (0-1) that use Engine.IO long-polling instead of websocket (default 0)",
    )
    peers.add_argument("--stress", action="store_true", help="also ramp each target to its max sustainable rate")
    peers.add_argument("--p99-bound", type=float, default=100.0)
    peers.add_argument("--start-rate", type=float, help="stress: first step in msg/s (default as for run)")
    peers.add_argument(
        "--narrow",
        type=_at_least_zero,
        default=stress.NARROW_TO,
        help=f"stress: bisect the maximum to within this fraction (default {stress.NARROW_TO:g}; 0: no bisection)",
    )
    peers.add_argument(
        "--only",
        nargs="*",
        help="targets to include (default: all): ours-durable ours-fast python-socketio node-socket.io",
    )
    peers.add_argument("--out", type=Path, default=RESULTS)
    _slow_flags(peers)
    _compression_flags(peers)
    sub.add_parser("list", help="list the scenarios")
    cost = sub.add_parser(
        "receive-cost",
        help="the load generator's CPU per checked delivery and per send, timed without a server",
        description=recvcost.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recvcost.add_arguments(cost)
    idle_parser = sub.add_parser(
        "idle-connections",
        help="the server's RSS per idle websocket connection, with and without permessage-deflate",
        description=idle.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    idle.add_arguments(idle_parser)
    return p


def _slow_flags(parser: argparse.ArgumentParser) -> None:
    defaults = scenarios.SlowReading()
    parser.add_argument(
        "--slow-share",
        type=_share,
        help=f"slow-readers: fraction of the room members that read slowly (default {defaults.share:.3g})",
    )
    parser.add_argument(
        "--read-fraction",
        type=_share,
        help="slow-readers: share of their rooms' message rate the slow members read while slow"
        f" (default {defaults.read_fraction:g})",
    )
    parser.add_argument(
        "--slow-for",
        type=float,
        help=f"slow-readers: seconds from the start during which they read slowly (default {defaults.slow_for:g});"
        f" the load lasts this + {scenarios.SLOW_READERS_RECOVERY_S:g} s unless --duration says otherwise",
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    if args.command == "compare":
        return commands.run_compare(parser, args)
    if args.command == "list":
        return commands.run_list()
    if args.command == "receive-cost":
        return recvcost.run(args)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.command == "idle-connections":
        return idle.run(args, command, args.out or RESULTS)
    if args.command == "peers":
        return commands.run_peers(args, command)
    if args.scenario == "stress":
        return commands.run_stress(args, command)
    return commands.run_scenario(args, command)


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Unknown names, and combinations that would silently do something else than asked, are refused."""
    if args.command in ("run", "peers") and args.scenario not in scenarios.names():
        parser.error(f"unknown scenario {args.scenario!r}; known: {', '.join(scenarios.names())}")
    _check_slow_flags(parser, args)
    if args.command == "peers":
        if args.scenario == "stress":
            parser.error("peers ramps the scenario it runs: use --stress (e.g. peers fanout --stress)")
        for flag in _ramp_flags(args) if not args.stress else []:
            parser.error(f"{flag} is for the stress ramp: add --stress")
    if args.command != "run":
        return
    _check_repeat(parser, args)
    _check_compression(parser, args)
    if args.shape not in scenarios.names()[:-1]:
        parser.error(f"unknown --shape {args.shape!r}; known: {', '.join(scenarios.names()[:-1])}")
    if args.pid is not None and not args.url:
        parser.error("--pid is for a running server given with --url (a started server's pid is known)")
    if args.profile and args.url and args.pid is None:
        parser.error("--profile with --url needs the server's --pid to attach py-spy to")
    _check_stress_flags(parser, args)


def _check_stress_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``run``: the flags a ramp cannot honour, and the ramp's own flags without a ramp."""
    if args.scenario != "stress":
        for flag in _ramp_flags(args):
            parser.error(f"{flag} is for the stress ramp (run stress, peers --stress)")
        return
    refused = (
        ("--profile", args.profile, "profile one step with run --rate instead"),
        ("--workers", args.workers, "each step uses one worker per client core"),
        ("--rate", args.rate, "the ramp sets the rates; --start-rate is the first"),
    )
    for flag, value, why in refused:
        if value:
            parser.error(f"{flag} does not apply to stress ({why})")


def _ramp_flags(args: argparse.Namespace) -> list[str]:
    """The ramp's own flags given on the command line."""
    given = {"--start-rate": args.start_rate is not None, "--narrow": args.narrow != stress.NARROW_TO}
    return [flag for flag, present in given.items() if present]


def _check_repeat(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repeat > 1 and args.scenario == "stress":
        parser.error("--repeat does not apply to stress (compare two stress records, one a side)")
    if args.repeat > 1 and args.profile:
        parser.error("--profile records one run: drop --repeat")


def _check_compression(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--ws-compression`` starts our server: refused with a running one, and a list with what runs it once."""
    if args.ws_compression and args.url:
        parser.error("--ws-compression starts our server with that setting: a running server (--url) has its own")
    if len(args.ws_compression) < 2:
        return
    refused = (
        ("stress", args.scenario == "stress", "ramp each setting in its own run stress --ws-compression X"),
        ("--repeat", args.repeat > 1, "one run a setting"),
        ("--profile", args.profile, "profile one setting"),
    )
    for what, given, why in refused:
        if given:
            parser.error(f"--ws-compression with several settings does not apply to {what} ({why})")


def _check_slow_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command in ("run", "peers") and args.scenario != "slow-readers" and commands.slow_reading(args) is not None:
        parser.error("--slow-share, --read-fraction and --slow-for are for the slow-readers scenario")


if __name__ == "__main__":
    sys.exit(main())

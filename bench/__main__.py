"""``python -m bench``: run scenarios, compare results, run peers. See ``python -m bench --help``."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bench import compare as compare_mod
from bench import recvcost, report, runner, scenarios, stress, target
from bench.live import LiveView
from bench.peers import launch
from bench.result import Repeats, Result, StressRecord, git_commit, load_any, machine, reference_ms

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="The minitalk-trio benchmark instrument.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario against our server (started fresh) or --url")
    run.add_argument(
        "scenario",
        help="tiny, light, quick, medium, strong, extreme, mega, single, multipub, ingest,"
        " fanout, slow-consumer, slow-readers, mixed, endurance, smoke, stress",
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
    sub.add_parser("list", help="list the scenarios")
    cost = sub.add_parser(
        "receive-cost",
        help="the load generator's CPU per checked delivery and per send, timed without a server",
        description=recvcost.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recvcost.add_arguments(cost)
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


def _slow_reading(args: argparse.Namespace) -> scenarios.SlowReading | None:
    given = {
        "share": args.slow_share,
        "read_fraction": args.read_fraction,
        "slow_for": args.slow_for,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return scenarios.SlowReading(**given) if given else None


def _by_name(args: argparse.Namespace) -> scenarios.Scenario:
    return scenarios.by_name(
        args.scenario,
        duration=args.duration,
        rate=args.rate,
        members=args.members,
        polling_share=args.polling_share,
        slow=_slow_reading(args),
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    if args.command == "compare":
        return run_compare(parser, args)
    if args.command == "list":
        for name in scenarios.names():
            print(name)
        return 0
    if args.command == "receive-cost":
        return recvcost.run(args)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.command == "peers":
        return run_peers(args, command)
    if args.scenario == "stress":
        return run_stress(args, command)
    scenario = _by_name(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    stem = f"{stamp}-{scenario.name}-{args.mode if not args.url else 'external'}"
    profile = args.out / f"{stem}-flame.svg" if args.profile else None
    runs: list[Result] = []
    for i in range(args.repeat):
        server = _server(args)  # a fresh server (and database) for each repeat: independent samples
        try:
            before = reference_ms()
            result = _measure(args, scenario, server, profile)
            result.machine["reference_ms"] = [before, reference_ms()]  # bench/compare.py: a slower machine
            runs.append(result)
        finally:
            server.stop()
        if args.repeat > 1:
            print(f"run {i + 1} of {args.repeat}: {summary(runs[-1])}", flush=True)
    if args.repeat == 1:
        write(runs[0], args.out, stem, command)
    else:
        write_repeats(runs, args.out, f"{stem}-x{args.repeat}", command)
    return 0


def _measure(
    args: argparse.Namespace, scenario: scenarios.Scenario, server: target.Target, profile: Path | None
) -> Result:
    if args.no_live:
        return runner.run(scenario, server, workers=args.workers, profile_to=profile)
    with LiveView(scenario, server.name) as live:
        return runner.run(
            scenario,
            server,
            workers=args.workers,
            profile_to=profile,
            on_tick=live.tick,
            on_second=live.server_sample,
        )


def summary(result: Result) -> str:
    """One line of what compare decides on."""
    return (
        f"acked {result.throughput['acked_msgs_per_s']:,.1f} msg/s, deliveries"
        f" {result.throughput['deliveries_per_s']:,.1f}/s, delivery p50 {result.delivery_latency_ms['p50']:,.2f} ms"
        f" p99 {result.delivery_latency_ms['p99']:,.2f} ms, ack p99 {result.ack_latency_ms['p99']:,.2f} ms,"
        f" lost {result.counts['lost']:,}, duplicated {result.counts['duplicated']:,}"
    )


def write_repeats(runs: list[Result], out: Path, stem: str, command: str) -> Path:
    """The record of repeats (JSON) and a Markdown page with each run's figures, their median and spread."""
    record = Repeats(
        command=command, git_commit=git_commit(), machine=machine(), started_at=runs[0].started_at, runs=runs
    )
    path = record.save(out / f"{stem}.json")
    first = runs[0]
    md = out / f"{stem}.md"
    md.write_text(
        f"# {first.scenario}: {len(runs)} runs\n\n{first.description}; {first.server['name']}, a freshly started"
        f" server for each run.\n\nCommand: `{command}`  \nCommit: {record.git_commit}\n\n"
        f"{compare_mod.repeats_table(runs)}\n\n"
        f"`python -m bench compare` reads this record as {len(runs)} runs of one side (bench/compare.py).\n"
    )
    print(md.read_text())
    print(f"\nresults: {path}, report: {md}")
    return md


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


def _check_slow_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command in ("run", "peers") and args.scenario != "slow-readers" and _slow_reading(args) is not None:
        parser.error("--slow-share, --read-fraction and --slow-for are for the slow-readers scenario")


def run_compare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Exit 0 (no regression), 1 (a regression), 3 (inconclusive); usage errors go through parser.error: exit 2."""
    old = _side(parser, "OLD", args.old, args.old_files)
    new = _side(parser, "NEW", args.new, args.new_files)
    if isinstance(old, StressRecord) and isinstance(new, StressRecord):
        threshold = 0.10 if args.threshold is None else args.threshold
        table, regressed = compare_mod.compare_stress(old, new, threshold)
        print(table)
        if regressed:
            print(f"\nregressed past {threshold:.0%}: {', '.join(regressed)}")
        print(f"\nverdict: {'regressed' if regressed else 'no change'}")
        return 1 if regressed else 0
    if isinstance(old, StressRecord) or isinstance(new, StressRecord):
        parser.error("compare needs run results (or repeats) on both sides, or one stress record on each")
    for warning in _differences(old[0], new[0]):
        print(f"warning: {warning}", file=sys.stderr)
    comparison = compare_mod.compare(old, new, floor=args.threshold, spread_factor=args.spread_factor)
    print(comparison.report())
    return EXIT_CODES[comparison.verdict]


# compare's exit codes; parser.error exits 2 on every usage error.
EXIT_CODES = {compare_mod.REGRESSED: 1, compare_mod.INCONCLUSIVE: 3, compare_mod.IMPROVED: 0, compare_mod.NO_CHANGE: 0}


def _side(
    parser: argparse.ArgumentParser, name: str, positional: Path | None, paths: list[Path] | None
) -> list[Result] | StressRecord:
    """One side's runs (results, repeats, directories of them, flattened), or its one stress record."""
    if positional is not None and paths:
        parser.error(f"{name} given twice: as a path and as --{name.lower()}")
    given = paths or ([positional] if positional is not None else [])
    if not given:
        parser.error(f"{name} is missing: compare OLD NEW, or compare --old PATH... --new PATH...")
    records = _records(parser, name, given)
    stress = [r for r in records if isinstance(r, StressRecord)]
    if stress:
        if len(records) > 1:
            parser.error(f"{name}: a stress record is compared alone (one a side), not with other records")
        if why := compare_mod.check_ramps(stress[0]):
            parser.error(f"{name}: the stress record {why}")
        return stress[0]
    runs: list[Result] = []
    for record in records:
        if isinstance(record, Repeats):
            runs += record.runs
        elif isinstance(record, Result):
            runs.append(record)
    if not runs:
        parser.error(f"{name}: the record of repeats holds no runs")
    kinds = {_run_kind(r) for r in runs}
    if len(kinds) > 1:
        parser.error(f"{name} mixes runs of different scenarios or servers: {sorted(kinds)}")
    return runs


def _records(parser: argparse.ArgumentParser, name: str, paths: list[Path]) -> list[Result | StressRecord | Repeats]:
    """Every record the paths name: a file, or each .json file of a directory (not its subdirectories)."""
    records: list[Result | StressRecord | Repeats] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                parser.error(f"{name}: directory {path} holds no .json record")
            records += [_load(parser, each) for each in found]
        else:
            records.append(_load(parser, path))
    return records


def _load(parser: argparse.ArgumentParser, path: Path) -> Result | StressRecord | Repeats:
    try:
        return load_any(path)
    except FileNotFoundError:
        parser.error(f"{path}: no such file or directory")
    except OSError as exc:
        parser.error(f"{path}: cannot read it: {exc.strerror or exc}")
    except msgspec.ValidationError as exc:  # a DecodeError too: first
        parser.error(f"{path}: not a bench result, record of repeats or stress record: {exc}")
    except msgspec.DecodeError as exc:
        parser.error(f"{path}: not JSON: {exc}")


def _run_kind(result: Result) -> str:
    """What must be equal for runs to be repeats of one another: scenario, offered load, length, server."""
    rate = result.parameters.get("offered_msgs_per_s")
    duration = result.parameters.get("duration_s")
    return f"{result.scenario} at {rate} msg/s for {duration} s on {result.server.get('name')}"


def _differences(old: Result, new: Result) -> list[str]:
    """What makes the two sides other than the same measurement: said on stderr, not refused."""
    out = []
    if _run_kind(old) != _run_kind(new):
        out.append(f"different runs: {_run_kind(old)!r} vs {_run_kind(new)!r}")
    env_old, env_new = old.server.get("environment", {}), new.server.get("environment", {})
    if env_old != env_new:
        out.append(f"the servers' environment differs: {env_old} vs {env_new}")
    for key in ("cores", "cpu_model"):
        a, b = old.machine.get(key), new.machine.get(key)
        if a != b:
            out.append(f"different machines: {key} {a} vs {b}")
    return out


TARGETS = ("ours-durable", "ours-fast", "python-socketio", "node-socket.io")


def start_target(name: str) -> target.Target:
    if name.startswith("ours-"):
        return target.start_ours(name.removeprefix("ours-"))
    return launch.start_peer(name)


def _server(args: argparse.Namespace) -> target.Target:
    """The server a run measures: a running one (``--url``, ``--also-url``) or ours, started for the run."""
    if args.url:
        return target.external(args.url, args.pid, args.also_url)
    return target.start_ours(args.mode, database=args.database)


def run_stress(args: argparse.Namespace, command: str) -> int:
    server = (
        target.external(args.url, args.pid, args.also_url)
        if args.url
        else target.start_ours(args.mode, database=args.database)
    )
    try:
        base = scenarios.by_name(args.shape, members=args.members, polling_share=args.polling_share)
        ramp = stress.ramp(
            server,
            base,
            start=args.start_rate,
            step_s=args.duration or stress.STEP_S,
            p99_bound_ms=args.p99_bound,
            narrow_to=args.narrow,
            on_step=_print_step,
        )
    finally:
        server.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = stress_record([ramp], command).save(args.out / f"{stamp}-stress-{args.mode}.json")
    image = report.stress_plot([ramp], args.out / "img" / f"{stamp}-stress-{args.mode}.png")
    md = path.with_suffix(".md")
    md.write_text(
        f"# Stress ramp\n\nCommand: `{command}`\n\n{stress_table([ramp])}\n\n{steps_table([ramp])}\n\n"
        f"![stress ramp]({image.relative_to(args.out)})\n"
    )
    print(md.read_text())
    print(f"\nresults: {path}, report: {md}")
    return 0


def _rate(rate: Any) -> str:
    """Whole messages/s, except the sub-10 rates a ramp reaches when it steps down."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"


def _print_step(step: dict[str, Any]) -> None:
    print(
        f"  {_rate(step['rate']):>8} msg/s offered: acked {step['acked_msgs_per_s']:>10,.0f}/s, deliveries"
        f" {step['deliveries_per_s']:>11,.0f}/s, p99 {step['p99_ms']:>9,.1f} ms, CPU server"
        f" {step['server_cpu_percent']:>3,.0f}% client {step['client_cpu_percent']:>3,.0f}%: {step['why']}",
        flush=True,
    )


def stress_table(ramps: list[dict[str, Any]]) -> str:
    lines = [
        "| target | shape | max sustainable msgs/s | deliveries/s | p99 at max (ms) | server / client CPU % at max"
        " | whose limit | between (offered) | next step failed on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ramps:
        at_least = "≥ " if stress.lower_bound(r) else ""
        lines.append(
            f"| {r['target']} | {r.get('shape', 'quick')} | {at_least}{r['max_sustainable_msgs_per_s']:,.0f}"
            f" | {at_least}{r['max_sustainable_deliveries_per_s']:,.0f} | {r['p99_at_max_ms']:,.1f}"
            f" | {stress.cpu_at_max(r)} | {stress.ramp_limit(r)} | {stress.bracket(r)} | {r['limited_by']} |"
        )
    lines += [
        "",
        "CPU % of one core: the server's busiest second, the load generator's busiest worker over the load."
        " Whose limit: that of the first step above the maximum that failed (client: the load generator"
        " saturated its core and the server did not). Between: the fastest step that passed and the slowest"
        " that failed; after the first failing step the ramp bisects until they are within"
        f" {stress.NARROW_TO:.0%} (at most {stress.MAX_BISECTIONS} steps).",
    ]
    if any(stress.lower_bound(r) for r in ramps):
        lines += [
            "",
            "≥: the ramp ended on a client-bound step (the load generator saturated its core) or ran out of"
            " steps, not on a step the server failed; the server's maximum is at least this.",
        ]
    return "\n".join(lines)


def steps_table(ramps: list[dict[str, Any]]) -> str:
    """Every step of every ramp: what was offered, what came back, and the verdict."""
    lines = [
        "| target | offered msgs/s | acked msgs/s | deliveries/s | p50 ms | p99 ms | lost | server CPU % (max)"
        " | client CPU % (max) | slow consumers cut | verdict | whose limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ramps:
        for s in r["steps"]:
            lines.append(
                f"| {r['target']} | {_rate(s['rate'])} | {s['acked_msgs_per_s']:,.0f} | {s['deliveries_per_s']:,.0f}"
                f" | {s['p50_ms']:,.1f} | {s['p99_ms']:,.1f} | {s['lost']:,} | {s['server_cpu_percent']:,.0f}"
                f" | {s['client_cpu_percent']:,.0f} | {s.get('slow_consumer_disconnects', 0):,.0f} | {s['why']}"
                f" | {stress.step_limit(s)} |"
            )
    crossed = [(r, s) for r in ramps for s in r["steps"] if "cross_p99_ms" in s]
    if crossed:
        lines += [
            "",
            "Deliveries of messages sent through another process of the cluster (the NOTIFY hop and the read):",
            "",
        ]
        lines += ["| target | offered msgs/s | cross-process p50 ms | cross-process p99 ms |", "|---|---|---|---|"]
        for r, s in crossed:
            lines.append(
                f"| {r['target']} | {_rate(s['rate'])} | {s['cross_p50_ms']:,.1f} | {s['cross_p99_ms']:,.1f} |"
            )
    return "\n".join(lines)


def run_peers(args: argparse.Namespace, command: str) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    results: list[Result] = []
    ramps: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name in args.only or TARGETS:
        try:
            server = start_target(name)
        except launch.PeerUnavailable as exc:
            print(exc)
            skipped.append(str(exc))
            continue
        except target.TargetError as exc:
            # One target that cannot start must not cost the others' results: say so in the report.
            print(f"{name} failed to start: {exc}")
            skipped.append(f"{name} failed to start: {_first_line(exc)}")
            continue
        print(f"== {server.name}", flush=True)
        try:
            scenario = _by_name(args)
            results.append(runner.run(scenario, server))
            if args.stress:
                ramps.append(
                    stress.ramp(
                        server,
                        scenario,
                        start=args.start_rate,
                        p99_bound_ms=args.p99_bound,
                        narrow_to=args.narrow,
                        on_step=_print_step,
                    )
                )
        except runner.RunError as exc:
            print(f"{name} failed: {exc}")
            skipped.append(f"{name} failed during the run: {_first_line(exc)}")
        finally:
            server.stop()
    if not results:
        print("no target produced a result", file=sys.stderr)
        return 1
    stem = f"{stamp}-peers-{args.scenario}"
    md = write(results, args.out, stem, command)
    extra = ["", "## Ratios (ours / peer)", "", ratio_table(results, ramps)]
    if ramps:
        image = report.stress_plot(ramps, args.out / "img" / f"{stem}-stress.png")
        extra += [
            "",
            "## Stress ramp: maximum sustainable rate",
            "",
            stress_table(ramps),
            "",
            f"![stress ramp]({image.relative_to(args.out)})",
            "",
            "### Every step",
            "",
            steps_table(ramps),
        ]
        stress_record(ramps, command).save(args.out / f"{stem}-stress.json")
    extra += [f"\n- {s}" for s in skipped]
    md.write_text(md.read_text() + "\n".join(extra) + "\n")
    print("\n".join(extra))
    return 0


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def stress_record(ramps: list[dict[str, Any]], command: str) -> StressRecord:
    return StressRecord(
        command=command,
        git_commit=git_commit(),
        machine=machine(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ramps=ramps,
    )


def ratio_table(results: list[Result], ramps: list[dict[str, Any]]) -> str:
    ours = [r for r in results if r.server["name"].startswith("minitalk-trio")]
    peers = [r for r in results if not r.server["name"].startswith("minitalk-trio")]
    by_name = {str(r["target"]): r for r in ramps}
    lines = [
        "| ours | peer | max msgs/s | max deliveries/s | p99 at the scenario's load (peer / ours) |",
        "|---|---|---|---|---|",
    ]
    for o in ours:
        for p in peers:
            ro, rp = by_name.get(o.server["name"]), by_name.get(p.server["name"])
            msgs = _ratio(ro, rp, "max_sustainable_msgs_per_s")
            dels = _ratio(ro, rp, "max_sustainable_deliveries_per_s")
            p99 = (
                p.delivery_latency_ms["p99"] / o.delivery_latency_ms["p99"]
                if o.delivery_latency_ms["p99"]
                else float("nan")
            )
            lines.append(f"| {o.server['name']} | {p.server['name']} | {msgs} | {dels} | {p99:,.1f}x |")
    return "\n".join(lines)


def _ratio(ours: dict[str, Any] | None, peer: dict[str, Any] | None, key: str) -> str:
    if not ours or not peer:
        return "(run with --stress)"
    a, b = float(ours[key]), float(peer[key])
    # A lower-bound maximum (client-bound, or out of steps): ours only → the ratio is at least this; the peer's →
    # at most; both → neither.
    bound = {(True, False): "≥ ", (False, True): "≤ ", (True, True): "~ "}.get(
        (stress.lower_bound(ours), stress.lower_bound(peer)), ""
    )
    return f"{bound}{a / b:,.1f}x" if b else "∞ (peer sustained none)"


def write(result: Result | list[Result], out: Path, stem: str, command: str) -> Path:
    results = result if isinstance(result, list) else [result]
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, r in enumerate(results):
        r.save(out, stem if len(results) == 1 else f"{stem}-{i}")
        images[r.server["name"]] = report.plots(r, out / "img", f"{stem}-{i}")
    md = out / f"{stem}.md"
    md.write_text(report.markdown(results, images, out, command))
    print(md.read_text())
    print(f"\nresults: {out / stem}.json, report: {md}")
    return md


if __name__ == "__main__":
    sys.exit(main())

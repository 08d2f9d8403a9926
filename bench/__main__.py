"""``python -m bench``: run scenarios, compare results, run peers. See ``python -m bench --help``."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import compare as compare_mod
from bench import report, runner, scenarios, target
from bench.result import Result, load

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="The minitalk-trio benchmark instrument.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario against our server (started fresh) or --url")
    run.add_argument(
        "scenario",
        help="tiny, light, quick, medium, strong, extreme, mega, single, multipub,"
        " fanout, slow-consumer, smoke, stress",
    )
    run.add_argument("--duration", type=float, help="seconds of load (each scenario has a default)")
    run.add_argument("--rate", type=float, help="messages/s, for single, multipub, fanout, slow-consumer")
    run.add_argument("--members", type=int, help="room size, for fanout and slow-consumer")
    run.add_argument("--mode", choices=["durable", "fast"], default="durable", help="our server's delivery mode")
    run.add_argument("--url", help="benchmark a running server at this loopback URL instead of starting one")
    run.add_argument("--pid", type=int, help="with --url: the server's pid, for CPU and RSS samples")
    run.add_argument("--workers", type=int, help="load-generator processes (default: one per client core)")
    run.add_argument(
        "--profile", action="store_true", help="record the server with py-spy; flame graph beside the report"
    )
    run.add_argument("--out", type=Path, default=RESULTS, help="where results and reports go")
    cmp = sub.add_parser("compare", help="compare two results; exit 1 if NEW regressed past the threshold")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    cmp.add_argument(
        "--threshold",
        type=float,
        default=0.10,
        help="noise threshold as a fraction (default 0.10: run-to-run variation on this machine)",
    )
    sub.add_parser("list", help="list the scenarios")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare":
        table, regressed = compare_mod.compare(load(args.old), load(args.new), args.threshold)
        print(table)
        if regressed:
            print(f"\nregressed past {args.threshold:.0%}: {', '.join(regressed)}")
            return 1
        return 0
    if args.command == "list":
        for name in [*scenarios.PRESETS, "single", "multipub", "fanout", "slow-consumer", "smoke"]:
            print(name)
        return 0
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    scenario = scenarios.by_name(args.scenario, duration=args.duration, rate=args.rate, members=args.members)
    server = target.external(args.url, args.pid) if args.url else target.start_ours(args.mode)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    stem = f"{stamp}-{scenario.name}-{args.mode if not args.url else 'external'}"
    try:
        profile = args.out / f"{stem}-flame.svg" if args.profile else None
        result = runner.run(scenario, server, workers=args.workers, profile_to=profile)
    finally:
        server.stop()
    write(result, args.out, stem, command)
    return 0


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

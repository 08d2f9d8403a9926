"""The commands behind ``python -m bench`` (``bench/__main__.py`` is the command line): run a scenario, a stress
ramp or the peers, write their records and reports, and compare records."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench import compare as compare_mod
from bench import report, runner, scenarios, stress, target
from bench.live import LiveView
from bench.peers import launch
from bench.report import ratio_table, steps_table, stress_table
from bench.result import (
    IdleRecord,
    Ramp,
    Repeats,
    Result,
    Step,
    StressRecord,
    git_commit,
    load_any,
    machine,
    reference_ms,
)


def slow_reading(args: argparse.Namespace) -> scenarios.SlowReading | None:
    given = {
        "share": args.slow_share,
        "read_fraction": args.read_fraction,
        "slow_for": args.slow_for,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return scenarios.SlowReading(**given) if given else None


def scenario_of(args: argparse.Namespace) -> scenarios.Scenario:
    return scenarios.by_name(
        args.scenario,
        duration=args.duration,
        rate=args.rate,
        members=args.members,
        polling_share=args.polling_share,
        slow=slow_reading(args),
        deflate_share=args.deflate_share,
        message_bytes=args.message_bytes,
    )


def run_list() -> int:
    """``list``: the scenarios, one a line."""
    for name in scenarios.names():
        print(name)
    return 0


def run_scenario(args: argparse.Namespace, command: str) -> int:
    """``run`` of one scenario (``--repeat N`` times, each on a fresh server): the result or the record of repeats."""
    if len(args.ws_compression) > 1:
        return run_compression_settings(args, command)
    scenario = scenario_of(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    stem = f"{stamp}-{scenario.name}-{args.mode if not args.url else 'external'}"
    profile = args.out / f"{stem}-flame.svg" if args.profile else None
    runs: list[Result] = []
    for i in range(args.repeat):
        server = _server(args, *args.ws_compression)  # a fresh server (and database) for each repeat
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


def run_compression_settings(args: argparse.Namespace, command: str) -> int:
    """``run --ws-compression on,off``: the scenario against a fresh server of each setting, one report with a
    column per setting and the figures issue 18 compares at the top."""
    scenario = scenario_of(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    stem = f"{stamp}-{scenario.name}-{args.mode}-ws-compression-{'-'.join(args.ws_compression)}"
    results: list[Result] = []
    for setting in args.ws_compression:
        server = _server(args, setting)
        try:
            before = reference_ms()
            result = _measure(args, scenario, server, None)
            result.machine["reference_ms"] = [before, reference_ms()]
            results.append(result)
        finally:
            server.stop()
        print(f"ws-compression {setting}: {summary(results[-1])}", flush=True)
    intro = "## permessage-deflate, setting by setting\n\n" + report.compression_summary(results)
    write(results, args.out, stem, command, intro=intro)
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
        f"acked {result.throughput.acked_msgs_per_s:,.1f} msg/s, deliveries"
        f" {result.throughput.deliveries_per_s:,.1f}/s, delivery p50 {result.delivery_latency_ms.p50:,.2f} ms"
        f" p99 {result.delivery_latency_ms.p99:,.2f} ms, ack p99 {result.ack_latency_ms.p99:,.2f} ms,"
        f" lost {result.counts.lost:,}, duplicated {result.counts.duplicated:,}"
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
        record = load_any(path)
    except FileNotFoundError:
        parser.error(f"{path}: no such file or directory")
    except OSError as exc:
        parser.error(f"{path}: cannot read it: {exc.strerror or exc}")
    except msgspec.ValidationError as exc:  # a DecodeError too: first
        parser.error(f"{path}: not a bench result, record of repeats or stress record: {exc}")
    except msgspec.DecodeError as exc:
        parser.error(f"{path}: not JSON: {exc}")
    if isinstance(record, IdleRecord):
        parser.error(f"{path}: a record of idle connections (memory), which compare does not read")
    return record


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


def _server(args: argparse.Namespace, ws_compression: str | None = None) -> target.Target:
    """The server a run measures: a running one (``--url``, ``--also-url``) or ours, started for the run (with
    ``--ws-compression`` set when given)."""
    if args.url:
        return target.external(args.url, args.pid, args.also_url)
    return target.start_ours(args.mode, database=args.database, ws_compression=ws_compression)


def run_stress(args: argparse.Namespace, command: str) -> int:
    server = _server(args, *args.ws_compression)
    try:
        base = scenarios.by_name(
            args.shape,
            members=args.members,
            polling_share=args.polling_share,
            deflate_share=args.deflate_share,
            message_bytes=args.message_bytes,
        )
        ramp = stress.ramp(
            server,
            base,
            start=args.start_rate,
            step_s=args.duration or stress.STEP_S,
            p99_bound_ms=args.p99_bound,
            narrow_to=args.narrow,
            on_step=print_step,
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


def print_step(step: Step) -> None:
    print(
        f"  {report.rate_text(step.rate):>8} msg/s offered: acked {step.acked_msgs_per_s:>10,.0f}/s, deliveries"
        f" {step.deliveries_per_s:>11,.0f}/s, p99 {step.p99_ms:>9,.1f} ms, CPU server"
        f" {step.server_cpu_percent:>3,.0f}% client {step.client_cpu_percent:>3,.0f}%: {step.why}",
        flush=True,
    )


def run_peers(args: argparse.Namespace, command: str) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    results: list[Result] = []
    ramps: list[Ramp] = []
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
            scenario = scenario_of(args)
            results.append(runner.run(scenario, server))
            if args.stress:
                ramps.append(
                    stress.ramp(
                        server,
                        scenario,
                        start=args.start_rate,
                        p99_bound_ms=args.p99_bound,
                        narrow_to=args.narrow,
                        on_step=print_step,
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


def stress_record(ramps: list[Ramp], command: str) -> StressRecord:
    return StressRecord(
        command=command,
        git_commit=git_commit(),
        machine=machine(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ramps=ramps,
    )


def write(result: Result | list[Result], out: Path, stem: str, command: str, *, intro: str = "") -> Path:
    """Each result's JSON and plots, and one Markdown report of them all (``intro`` before its main table)."""
    results = result if isinstance(result, list) else [result]
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, r in enumerate(results):
        r.save(out, stem if len(results) == 1 else f"{stem}-{i}")
        images[r.server["name"]] = report.plots(r, out / "img", f"{stem}-{i}")
    md = out / f"{stem}.md"
    md.write_text(report.markdown(results, images, out, command, intro=intro))
    print(md.read_text())
    print(f"\nresults: {out / stem}.json, report: {md}")
    return md

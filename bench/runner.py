"""Runs one scenario against one target: setup over REST, workers on the client cores, sampling, results."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench import slowreport, worker
from bench.accounting import StreamSummary, settle
from bench.histogram import Histogram
from bench.result import Counts, Result, Second, Throughput, Wire, git_commit, machine
from bench.scenarios import Scenario
from bench.target import Sampler, Target, check_loopback, histogram_means, server_cores

# In a room bigger than this, this many members check every delivery (order, duplicates, loss, latency) and the
# others only count deliveries (C-speed bytes.count): one client core can then absorb a 1000-member fan-out.
# 32 checkers of a 1000-member room still give 32 latency samples per message (31,000/s at 973 msg/s); at
# 100 the checkers' JSON parsing took a third of the client's core (py-spy) and the ramp ended client-bound.
CHECKED_PER_ROOM = 32
CLIENT_BOUND_CPU = 90.0  # a worker busier than this (% of one core) may be what limits the numbers


class RunError(RuntimeError):
    pass


# Users and rooms per setup request: well under the server's max_batch_items, small enough for any peer.
BATCH = 500


def setup(target: Target, scenario: Scenario) -> tuple[list[str], list[str]]:
    """Users and rooms through the batch routes (signup-batch, login-batch, chatrooms-batch: one batch of rooms per
    creator, the first member of each room): tokens and room ids."""
    tag = f"{int(time.time()) % 100000:05d}"
    creds = [{"username": f"bench{tag}_{i}", "password": f"password{i}_2024"} for i in range(scenario.users)]
    with httpx.Client(base_url=target.url, timeout=300) as http:
        tokens: list[str] = []
        for start in range(0, len(creds), BATCH):
            chunk = creds[start : start + BATCH]
            r = http.post("/api/auth/signup-batch", json={"users": chunk})
            if r.status_code != 201:
                raise RunError(f"signup-batch: {r.status_code} {r.text[:200]}")
            r = http.post("/api/auth/login-batch", json={"users": chunk})
            if r.status_code != 200 or len(r.json()["results"]) != len(chunk):
                raise RunError(f"login-batch: {r.status_code} {r.text[:200]}")
            tokens += [entry["token"] for entry in r.json()["results"]]
        by_creator: dict[int, list[int]] = {}
        for index, members in enumerate(scenario.rooms):
            by_creator.setdefault(members[0], []).append(index)
        room_ids = [""] * len(scenario.rooms)
        for creator, indexes in by_creator.items():
            for start in range(0, len(indexes), BATCH):
                chunk_ix = indexes[start : start + BATCH]
                rooms = [
                    {"name": f"bench {i} 🎆", "participants": [creds[m]["username"] for m in scenario.rooms[i][1:]]}
                    for i in chunk_ix
                ]
                r = http.post(
                    "/api/chatrooms-batch",
                    json={"rooms": rooms},
                    headers={"Authorization": f"Bearer {tokens[creator]}"},
                )
                created = r.json().get("created", []) if r.status_code == 201 else []
                if len(created) != len(chunk_ix):  # "created" is in input order (contract §2, route 7)
                    raise RunError(f"chatrooms-batch: {r.status_code} {r.text[:200]}")
                for i, room in zip(chunk_ix, created, strict=True):
                    room_ids[i] = room["roomId"]
    return tokens, room_ids


def plan_workers(
    scenario: Scenario, target: Target, *, tokens: list[str], room_ids: list[str], workers: int, cpus: list[int]
) -> list[worker.WorkerPlan]:
    sends: dict[int, list[tuple[int, float]]] = {}
    for send in scenario.sends:
        sends.setdefault(send.user, []).append((send.room, send.rate))
    checked = {u for members in scenario.rooms for u in members[:CHECKED_PER_ROOM]} | set(sends)
    polling = scenario.polling_members()
    deflate = scenario.deflate_members()
    members = [
        worker.MemberPlan(
            u,
            tokens[u],
            sends.get(u, []),
            u in scenario.stalled,
            u in checked,
            scenario.churn.get(u, []),
            u in polling,
            scenario.read_fraction if u in scenario.slow else 1.0,
            scenario.delivery_rate(u) if u in scenario.slow else 0.0,
            u in deflate,
        )
        for u in range(scenario.users)
    ]
    host, port = target.host_port
    # A cluster: worker w drives process w mod n (its members connect there; rooms were made through the first).
    ports = [port, *(check_loopback(url)[1] for url in target.more_urls)]
    plans = []
    for w in range(workers):
        # User u is worker u mod workers's (members[w::workers]), and worker w drives process w mod len(ports).
        remote = [u for u in range(scenario.users) if (u % workers) % len(ports) != w % len(ports)]
        mine = members[w::workers]
        cpu = [cpus[w % len(cpus)]] if cpus else []
        plans.append(
            worker.WorkerPlan(
                w,
                host,
                ports[w % len(ports)],
                room_ids,
                mine,
                scenario.duration,
                scenario.drain,
                scenario.padding,
                cpu,
                slow_for=scenario.slow_for,
                remote_senders=remote if len(ports) > 1 else [],
                text=scenario.text,
            )
        )
    return [p for p in plans if p.members]


def run(
    scenario: Scenario,
    target: Target,
    *,
    workers: int | None = None,
    on_second: Callable[[dict[str, float]], None] | None = None,
    profile_to: Path | None = None,
    on_tick: Callable[[Any], None] | None = None,
) -> Result:
    _, client_cpus = server_cores()
    workers = workers or max(1, len(client_cpus))
    if target.more_urls:  # one worker per process at least: a worker drives one process (see plan_workers)
        workers = max(workers, 1 + len(target.more_urls))
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    tokens, room_ids = setup(target, scenario)
    plans = plan_workers(scenario, target, tokens=tokens, room_ids=room_ids, workers=workers, cpus=client_cpus)
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    start_event = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=worker.main, args=(msgspec.msgpack.encode(p), results, start_event, start_at), daemon=True)
        for p in plans
    ]
    for proc in procs:
        proc.start()
    try:
        return _drive(
            scenario,
            target,
            plans=plans,
            results=results,
            start_event=start_event,
            start_at=start_at,
            started_at=started_at,
            on_second=on_second,
            profile_to=profile_to,
            on_tick=on_tick,
        )
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _drive(
    scenario: Scenario,
    target: Target,
    *,
    plans: list[worker.WorkerPlan],
    results: Any,
    start_event: Any,
    start_at: Any,
    started_at: str,
    on_second: Callable[[dict[str, float]], None] | None,
    profile_to: Path | None,
    on_tick: Callable[[Any], None] | None = None,
) -> Result:
    ready = 0
    while ready < len(plans):
        kind, payload = _get(results, 120)
        if kind == "error":
            raise RunError(payload)
        ready += 1
    sampler = Sampler(target)
    try:
        metrics_before = sampler.scrape()
        reports, errors, profile_note = _collect(
            scenario,
            target,
            sampler,
            workers=len(plans),
            results=results,
            start=(start_event, start_at),
            on_second=on_second,
            on_tick=on_tick,
            profile_to=profile_to,
        )
        metrics_after = sampler.scrape()
    finally:
        sampler.close()
    result = _result(
        scenario,
        target,
        reports,
        errors=errors,
        sampler=sampler,
        before=metrics_before,
        after=metrics_after,
        started_at=started_at,
    )
    if profile_note is not None:
        result.notes.append(profile_note)
    return result


def _collect(
    scenario: Scenario,
    target: Target,
    sampler: Sampler,
    *,
    workers: int,
    results: Any,
    start: tuple[Any, Any],
    on_second: Callable[[dict[str, float]], None] | None,
    on_tick: Callable[[Any], None] | None,
    profile_to: Path | None,
) -> tuple[list[worker.WorkerReport], list[str], str | None]:
    """Start the workers' clocks; sample the server each second until every worker reported or failed."""
    start_event, start_at = start
    begin = time.monotonic() + 0.5
    start_at.value = begin
    start_event.set()
    profiler = _start_profiler(target, scenario.duration, profile_to)
    reports: list[worker.WorkerReport] = []
    errors: list[str] = []
    next_sample = begin
    while len(reports) + len(errors) < workers:
        now = time.monotonic()
        if now >= next_sample:  # sample on the second, whether or not workers are talking
            t = now - begin
            if t > scenario.duration + scenario.drain + 120:
                raise RunError("workers did not report in time")
            sampler.sample(t)
            if on_second is not None and sampler.samples:
                on_second(sampler.samples[-1])
            next_sample += 1.0
            continue
        try:
            kind, payload = results.get(timeout=next_sample - now)
        except queue_module.Empty:
            continue
        if kind == "tick":
            if on_tick is not None:
                on_tick(payload)
        elif kind == "report":
            reports.append(msgspec.msgpack.decode(payload, type=worker.WorkerReport))
        elif kind == "error":
            errors.append(payload)
    profile_note = _finish_profiler(profiler, profile_to, scenario.duration)
    return reports, errors, profile_note


def _get(results: Any, timeout: float) -> tuple[str, Any]:
    try:
        item: tuple[str, Any] = results.get(timeout=timeout)
    except queue_module.Empty:
        raise RunError("a worker did not connect its clients in time") from None
    return item


def _start_profiler(target: Target, duration: float, out: Path | None) -> subprocess.Popen[bytes] | None:
    if out is None or target.pid is None:
        return None
    py_spy = py_spy_path()
    if py_spy is None:
        raise RunError("--profile needs py-spy: pip install py-spy (it is in the bench extra)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [py_spy, "record", "-p", str(target.pid), "-d", str(int(duration)), "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=out.with_suffix(".log").open("wb"),
    )


def _finish_profiler(profiler: subprocess.Popen[bytes] | None, out: Path | None, duration: float) -> str | None:
    """Wait for py-spy to write its flame graph; the report's note on where it is, or why there is none."""
    if profiler is None or out is None:
        return None
    profiler.wait(timeout=duration + 60)
    if out.exists():
        return f"py-spy flame graph of the server: [{out.name}]({out.name})"
    log = out.with_suffix(".log").read_text(errors="replace").strip()[-300:]
    return f"py-spy produced no flame graph: {log or 'no output'}"


def py_spy_path() -> str | None:
    """py-spy beside this interpreter (a venv not on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _result(
    scenario: Scenario,
    target: Target,
    reports: list[worker.WorkerReport],
    *,
    errors: list[str],
    sampler: Sampler,
    before: dict[str, float],
    after: dict[str, float],
    started_at: str,
) -> Result:
    accepted = {(s, r): n for rep in reports for s, r, n in rep.accepted}
    seen = {(m, s, r): summary for rep in reports for m, s, r, summary in rep.seen}
    readers = {room: [m for m in members if m not in scenario.stalled] for room, members in enumerate(scenario.rooms)}
    counted = {m: n for rep in reports for m, n in rep.counted}
    written = {(s, r): n for rep in reports for s, r, n in rep.written}
    totals = settle(accepted, seen, readers, counted, lenient=set(scenario.churn), written=written)
    churn: dict[str, float] = {}
    history = Histogram()
    for rep in reports:
        for key, value in rep.churn.items():
            churn[key] = churn.get(key, 0) + value
        history.add(Histogram.decode(rep.history_hist))
    if not scenario.churn:
        churn = {}
    elif history.count:
        churn |= {"history_p50_ms": history.percentile_ms(50), "history_p99_ms": history.percentile_ms(99)}
    delivery, ack, cross = Histogram(), Histogram(), Histogram()
    for rep in reports:
        delivery.add(Histogram.decode(rep.delivery_hist))
        ack.add(Histogram.decode(rep.ack_hist))
        if rep.cross_hist:
            cross.add(Histogram.decode(rep.cross_hist))
    sent = sum(r.sent for r in reports)
    acked = sum(r.acked for r in reports)
    duration = scenario.duration
    client_cpu = [round(100 * r.cpu_seconds / max(r.wall_seconds, 1e-9), 1) for r in reports]
    # Counters and histogram sums/counts as changes over the run; gauges (outbox, queue, lag) as final values.
    delta = {
        k: after[k] - before.get(k, 0.0) if k.endswith(("_total", "_sum", "_count", '_bucket{le="+Inf"}')) else after[k]
        for k in after
        if "_bucket" not in k or k.endswith('_bucket{le="+Inf"}')
    }
    notes = []
    if any(c > CLIENT_BOUND_CPU for c in client_cpu):
        notes.append(
            f"client-bound: a worker used more than {CLIENT_BOUND_CPU:g}% of its core; the server may"
            " be able to do more than these numbers show"
        )
    if not target.persists:
        notes.append(f"{target.name} persists nothing: messages live only in memory")
    slow_members, slow_phases = (
        slowreport.settle_slow(
            scenario,
            reports,
            accepted=accepted,
            written=written,
            seen=seen,
            samples=sampler.samples,
            commit=(before, sampler.commit_snapshots, after),
        )
        if scenario.slow_for > 0  # with no slow member too: the baseline's phases
        else ([], None)
    )
    result = Result(
        scenario=scenario.name,
        description=scenario.description,
        parameters={
            "users": scenario.users,
            "rooms": len(scenario.rooms),
            "duration_s": duration,
            "offered_msgs_per_s": round(scenario.offered_rate, 2),
            "expected_deliveries_per_s": round(scenario.expected_deliveries_per_s, 2),
            "padding_chars": scenario.padding,
            "stalled_members": len(scenario.stalled),
            "polling_members": len(scenario.polling_members()),
            "deflate_offered_members": len(scenario.deflate_members()),
            "text_chars": [scenario.text.min_chars, scenario.text.max_chars] if scenario.text else [],
            "slow_members": len(scenario.slow),
            "drain_s": scenario.drain,
            "workers": len(reports),
            "arithmetic": scenario.arithmetic,
        },
        server=target.description(),
        git_commit=git_commit(),
        machine=machine(),
        started_at=started_at,
        counts=Counts(
            offered=scenario.scheduled_messages(),
            sent=sent,
            acked=acked,
            rejected=sum(r.rejected for r in reports),
            expected_deliveries=totals.expected,
            delivered=totals.delivered,
            lost=totals.lost,
            duplicated=totals.duplicated,
            out_of_order=totals.out_of_order,
            delivered_unacked=totals.unacked,
        ),
        throughput=Throughput(
            offered_msgs_per_s=round(scenario.offered_rate, 1),
            sent_msgs_per_s=round(sent / duration, 1),
            acked_msgs_per_s=round(acked / duration, 1),
            deliveries_per_s=round(totals.delivered / duration, 1),
        ),
        delivery_latency_ms=delivery.summary_ms(),
        cross_latency_ms=cross.summary_ms(),  # NaN when no message crossed: a single process
        ack_latency_ms=ack.summary_ms(),
        timeline=_timeline(reports),
        server_resources=sampler.samples,
        server_metrics={k.removeprefix("minitalk_"): v for k, v in delta.items()}
        | {f"mean_{name}": mean for name, mean in histogram_means(before, after).items()},
        client_cpu_percent=client_cpu,
        churn=churn,
        client_bound=bool(notes and notes[0].startswith("client-bound")),
        errors=[e[:500] for rep in reports for e in rep.errors][:20] + errors,
        notes=notes,
        slow_members=slow_members,
        wire=wire_of(reports, seen, counted, everyone=delivery),
        server_cpu_us_per_message=cpu_per_message(sampler.samples, delta.get(ACCEPTED, acked)),
    )
    if slow_phases is not None:
        result.slow_phases = slow_phases
    return result


def wire_of(
    reports: list[worker.WorkerReport],
    seen: dict[tuple[int, int, int], StreamSummary],
    counted: dict[int, int],
    *,
    everyone: Histogram | None = None,
) -> Wire:
    """The websocket members' bytes received per delivered message and their delivery latency, deflate and plain
    apart. When no member agreed on deflate, the plain members' latency is ``everyone``'s (every checked delivery's).
    """
    delivered = dict(counted)
    for (member, _, _), summary in seen.items():
        delivered[member] = delivered.get(member, 0) + summary.delivered
    wire = Wire.of(
        [
            (m.offered, m.negotiated, m.wire_bytes, m.inflated, delivered.get(m.member, 0))
            for rep in reports
            for m in rep.wire
        ]
    )
    if any(rep.deflate_hist or rep.plain_hist for rep in reports):
        deflate, plain = Histogram(), Histogram()
        for rep in reports:
            deflate.add(Histogram.decode(rep.deflate_hist))
            plain.add(Histogram.decode(rep.plain_hist))
        wire.deflate_latency_ms, wire.plain_latency_ms = deflate.summary_ms(), plain.summary_ms()
    elif everyone is not None and wire.plain_members:
        wire.plain_latency_ms = everyone.summary_ms()
    return wire


ACCEPTED = "minitalk_messages_accepted_total"  # our server's; a peer's accepted messages are the acked ones


def cpu_per_message(samples: list[dict[str, float]], accepted: float) -> float:
    """The server's CPU µs per accepted message, from its first sample (the load's start) to its last (after the
    drain); NaN without two samples (a server we did not start) or without an accepted message."""
    cpu = [s["cpu_s"] for s in samples if "cpu_s" in s]
    if len(cpu) < 2 or accepted <= 0:
        return float("nan")
    return round((cpu[-1] - cpu[0]) / accepted * 1e6, 2)


def _timeline(reports: list[worker.WorkerReport]) -> list[Second]:
    seconds = max((len(r.timeline) for r in reports), default=0)
    rows = []
    for i in range(seconds):
        sent = acked = delivered = 0
        hist, slow = Histogram(), Histogram()
        for r in reports:
            if i < len(r.timeline):
                s, a, d, encoded = r.timeline[i]
                sent, acked, delivered = sent + s, acked + a, delivered + d
                hist.add(Histogram.decode(encoded))
            if i < len(r.slow_timeline):
                slow.add(Histogram.decode(r.slow_timeline[i]))
        rows.append(
            Second(
                t=i + 1,
                sent=sent,
                acked=acked,
                delivered=delivered,
                p50_ms=hist.percentile_ms(50),
                p99_ms=hist.percentile_ms(99),
                slow_p99_ms=slow.percentile_ms(99),
            )
        )
    return rows

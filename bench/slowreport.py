"""The slow-readers scenario settled and reported: per slow member, in aggregate, and the server phase by phase.

Settling reuses :func:`bench.accounting.settle` one member at a time, and splits what a member lost into holes
(later messages of the same stream arrived: the server dropped these) and a tail (the stream's last messages
never came: the member was cut off, or the server still owed them when the drain ended). A member caught up when
the last message scheduled before the end of the slow phase arrived, provided none of those messages is missing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import worker
from bench.accounting import StreamSummary, settle
from bench.histogram import Histogram
from bench.result import Result, SlowMember, SlowPhases
from bench.scenarios import Scenario, stream_length
from bench.slowread import SlowReadStats
from bench.target import histogram_quantile

Streams = dict[tuple[int, int], int]


def settle_slow(
    scenario: Scenario,
    reports: list[worker.WorkerReport],
    *,
    accepted: Streams,
    written: Streams,
    seen: dict[tuple[int, int, int], StreamSummary],
    samples: list[dict[str, float]],
    commit: tuple[dict[str, float], list[tuple[float, dict[str, float]]], dict[str, float]],
) -> tuple[list[SlowMember], SlowPhases]:
    """Per slow member and the aggregate; ``commit`` is (scrape before, per-second snapshots, scrape after)."""
    disconnects: dict[int, list[float]] = {}
    for rep in reports:
        for member, at in rep.disconnects:
            disconnects.setdefault(member, []).append(at)
    observed = {s.member: s for rep in reports for s in rep.slow}
    members = [
        _member(
            scenario,
            m,
            accepted=accepted,
            written=written,
            seen=seen,
            disconnects=disconnects.get(m, []),
            observed=observed.get(m),
        )
        for m in scenario.slow
    ]
    readers = {room: [m for m in ms if m not in scenario.slow] for room, ms in enumerate(scenario.rooms)}
    rest = settle(accepted, seen, readers, written=written)
    others = {m for ms in readers.values() for m in ms}
    slow_latency = Histogram()
    for rep in reports:
        slow_latency.add(Histogram.decode(rep.slow_hist))
    phases = SlowPhases(
        slow_for_s=scenario.slow_for,
        read_fraction=scenario.read_fraction,
        slow_members=len(members),
        other_members=len(others),
        slow_totals=_sum(members),
        other_totals={
            "expected": rest.expected,
            "delivered": rest.delivered,
            "lost": rest.lost,
            "duplicated": rest.duplicated,
            "out_of_order": rest.out_of_order,
            "disconnects": sum(len(disconnects.get(m, [])) for m in others),
        },
        slow_latency_ms=slow_latency.summary_ms(),
        rss_mb=_rss_phases(samples, scenario.slow_for),
        commit_p99_ms=_commit_p99(commit, scenario.slow_for),
        server_cut_off_at_s=_cut_off_at(samples),
    )
    phases.verdict = verdict(members, phases)
    return members, phases


def _member(
    scenario: Scenario,
    member: int,
    *,
    accepted: Streams,
    written: Streams,
    seen: dict[tuple[int, int, int], StreamSummary],
    disconnects: list[float],
    observed: SlowReadStats | None,
) -> SlowMember:
    rooms = {room for room, ms in enumerate(scenario.rooms) if member in ms}
    totals = settle(accepted, seen, {room: [member] for room in rooms}, written=written)
    rates = {(s.user, s.room): s.rate for s in scenario.sends}
    gaps = tail = old_missing = 0
    for (sender, room), count in accepted.items():
        if room not in rooms:
            continue
        summary = seen.get((member, sender, room), StreamSummary(0, [], 0, 0, 0))
        gaps += sum(1 for n in summary.missing if n < count)
        tail += max(0, count - summary.next)
        # messages of this stream scheduled before the slow phase ended (message n is due at n / rate)
        old = min(count, math.ceil(scenario.slow_for * rates.get((sender, room), 0.0) - 1e-9))
        old = min(old, stream_length(scenario.duration, rates.get((sender, room), 0.0)))
        old_missing += sum(1 for n in summary.missing if n < old) + max(0, old - summary.next)
    last_old = observed.last_old_arrival_s if observed else math.nan
    caught_up = old_missing == 0 and not math.isnan(last_old)
    return SlowMember(
        member=member,
        delivery_rate=round(scenario.delivery_rate(member), 1),
        expected=totals.expected,
        delivered=totals.delivered,
        unacked=totals.unacked,
        lost=totals.lost,
        lost_in_gaps=gaps,
        lost_at_tail=tail,
        duplicated=totals.duplicated,
        out_of_order=totals.out_of_order,
        disconnects=len(disconnects),
        disconnected_at_s=round(min(disconnects), 2) if disconnects else math.nan,
        catch_up_s=round(max(0.0, last_old - scenario.slow_for), 3) if caught_up else math.nan,
        lagging_s=round(observed.lagging_s, 2) if observed else math.nan,
        max_latency_ms=round(observed.max_latency_ms, 1) if observed else math.nan,
        bytes_read=observed.bytes_read if observed else 0,
    )


def _sum(members: list[SlowMember]) -> dict[str, int]:
    keys = ("expected", "delivered", "unacked", "lost", "lost_in_gaps", "lost_at_tail", "duplicated", "out_of_order")
    out = {k: sum(getattr(m, k) for m in members) for k in keys}
    out["disconnects"] = sum(m.disconnects for m in members)
    out["disconnected_members"] = sum(1 for m in members if m.disconnects)
    out["never_caught_up"] = sum(1 for m in members if math.isnan(m.catch_up_s))
    return out


def _cut_off_at(samples: list[dict[str, float]]) -> list[float]:
    """The sample times at which our server's slow-consumer disconnect counter had gone up (once per member)."""
    out, last = [], 0.0
    for s in samples:
        count = s.get("slow_consumer_disconnects", last)
        out += [s["t"]] * int(count - last)
        last = count
    return out


def _rss_phases(samples: list[dict[str, float]], slow_for: float) -> dict[str, float]:
    if not samples:
        return {}
    during = [s["rss_mb"] for s in samples if s["t"] <= slow_for]
    after = [s["rss_mb"] for s in samples if s["t"] > slow_for]
    return {
        "start": samples[0]["rss_mb"],
        "max_slow": max(during, default=math.nan),
        "max_after": max(after, default=math.nan),
        "end": samples[-1]["rss_mb"],
    }


def _commit_p99(
    commit: tuple[dict[str, float], list[tuple[float, dict[str, float]]], dict[str, float]], slow_for: float
) -> dict[str, float]:
    """Commit p99 over the slow phase, over the rest of the run (with the drain), and over the whole run (ms)."""
    before, snapshots, after = commit
    if not snapshots:
        return {}  # no /metrics: a peer
    at_end = max((snap for snap in snapshots if snap[0] <= slow_for), key=lambda snap: snap[0], default=None)
    mid = at_end[1] if at_end else before
    spans = {"slow": (before, mid), "after": (mid, after), "run": (before, after)}
    return {name: round(histogram_quantile(0.99, a, b) * 1000, 3) for name, (a, b) in spans.items()}


def verdict(members: list[SlowMember], phases: SlowPhases) -> str:
    """Did the server buffer for its slow members, drop messages to them, or cut them off?"""
    t = phases.slow_totals
    rss = phases.rss_mb
    peak = max((v for k, v in rss.items() if k.startswith("max") and not math.isnan(v)), default=math.nan)
    memory = f"; server RSS {rss['start']:.0f} MB at the start, {peak:.0f} MB at most" if rss else ""
    if not members:
        text = "no slow members (a baseline: the same load, everyone at full speed)"
    elif t["disconnects"]:
        first = min(m.disconnected_at_s for m in members if m.disconnects)
        cut = phases.server_cut_off_at_s
        server = f", the server's counter by {cut[0]:.0f} s" if cut else ""
        text = (
            f"disconnected: cut off {t['disconnected_members']} of {len(members)} slow members (the first noticed"
            f" {first:.1f} s into the load{server}); what they missed is lost: {t['lost']:,} messages"
        )
        text += " (the disconnects came after everything sent to them had arrived)" if not t["lost"] else ""
    elif t["lost_in_gaps"]:
        text = f"dropped: {t['lost_in_gaps']:,} messages to slow members never came (holes in their streams)"
    elif t["lost_at_tail"]:
        text = f"buffered, but still owed slow members {t['lost_at_tail']:,} messages when the drain ended"
    else:
        worst = max((m.catch_up_s for m in members), default=math.nan)
        text = f"buffered: every message delivered, late (worst catch-up {worst:.2f} s after the slow phase)"
    o = phases.other_totals
    if o["lost"] or o["disconnects"]:
        text += f"; the full-speed members lost {o['lost']:,} and were disconnected {o['disconnects']} times"
    return text + memory


# --- report -------------------------------------------------------------------------------------------------------


def _f(value: float, digits: int = 2) -> str:
    return "never" if math.isnan(value) else f"{value:,.{digits}f}"


def markdown(results: list[Result]) -> list[str]:
    """The scenario's section: the targets side by side, then each target's slow members, worst first."""
    ours = [r for r in results if r.slow_phases.slow_for_s > 0]  # NaN: not the slow-readers scenario
    if not ours:
        return []
    first = ours[0].slow_phases
    lines = [
        "## Slow readers",
        "",
        f"{first.slow_members} slow members read at {first.read_fraction:.0%} of their rooms' message rate for the"
        f" first {first.slow_for_s:g} s, then at full speed; {first.other_members} members read at full speed"
        " throughout. Nobody reconnects: a slow member the server disconnects misses the rest of the run (lost);"
        " it notices the disconnect only when it next reads, so the server's own count (/metrics, each second) is"
        ' given too. "Ack never came": deliveries of messages whose ack never reached their sender (a slow'
        " member's acks wait behind its backlog): neither expected nor lost."
        " Catch-up: from the end of the slow phase until everything sent before it had arrived (never: something"
        " sent before it never came). Lagging: time with deliveries more than 1 s late. The headline delivery"
        " latency above is the full-speed members'; the slow members' is below (the ack latency above includes"
        " the slow members' own acks, which wait behind their backlog).",
        "",
        "| | " + " | ".join(r.server["name"] for r in ours) + " |",
        "|---|" + "---|" * len(ours),
    ]
    for label, get in _ROWS:
        lines.append(f"| {label} | " + " | ".join(get(r) for r in ours) + " |")
    lines.append("")
    for r in ours:
        table = _member_table(r) if r.slow_members else []
        lines += [f"**{r.server['name']}**: {r.slow_phases.verdict}.", "", *table, ""]
    return lines


def _total(side: str, key: str) -> Any:
    def get(r: Result) -> str:
        totals = r.slow_phases.slow_totals if side == "slow" else r.slow_phases.other_totals
        return f"{totals.get(key, 0):,}"

    return get


def _worst_catch_up(r: Result) -> str:
    values = [m.catch_up_s for m in r.slow_members]
    never = sum(1 for v in values if math.isnan(v))
    caught = [v for v in values if not math.isnan(v)]
    text = f"{max(caught):,.2f} s" if caught else "-"
    return text + (f" ({never} never)" if never else "")


def _cut(r: Result) -> str:
    times = r.slow_phases.server_cut_off_at_s
    shown = ", ".join(f"{t:.0f}" for t in times[:8]) + (", ..." if len(times) > 8 else "")
    return f"{len(times)} ({shown})" if times else "0"


def _t(r: Result) -> dict[str, int]:
    return r.slow_phases.slow_totals


def _slow_ms(r: Result, key: str) -> str:
    return _na(r.slow_phases.slow_latency_ms.by_label()[key], 0)


def _na(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _commit(key: str) -> Any:
    return lambda r: _f(r.slow_phases.commit_p99_ms.get(key, math.nan)).replace("never", "n/a (no /metrics)")


def _rss(key: str) -> Any:
    return lambda r: _f(r.slow_phases.rss_mb.get(key, math.nan), 1).replace("never", "n/a")


_ROWS: list[tuple[str, Any]] = [
    ("slow members: expected deliveries", _total("slow", "expected")),
    ("slow members: delivered (of them, ack never came)", lambda r: "{delivered:,} ({unacked:,})".format(**_t(r))),
    ("slow members: lost (holes / tail)", lambda r: "{lost:,} ({lost_in_gaps:,} / {lost_at_tail:,})".format(**_t(r))),
    ("slow members: duplicated", _total("slow", "duplicated")),
    ("slow members: out of order", _total("slow", "out_of_order")),
    ("slow members: disconnects", _total("slow", "disconnects")),
    ("server: slow-consumer cut-offs (at s)", lambda r: _cut(r) if r.slow_phases.commit_p99_ms else "n/a"),
    ("slow members: worst catch-up", _worst_catch_up),
    ("slow members: most time lagging s", lambda r: _na(max((m.lagging_s for m in r.slow_members), default=math.nan))),
    ("slow members: delivery p99 / max ms", lambda r: f"{_slow_ms(r, 'p99')} / {_slow_ms(r, 'max')}"),
    ("full-speed members: lost", _total("other", "lost")),
    ("full-speed members: duplicated", _total("other", "duplicated")),
    ("full-speed members: out of order", _total("other", "out_of_order")),
    ("full-speed members: disconnects", _total("other", "disconnects")),
    ("full-speed members: delivery p99 ms", lambda r: _f(r.delivery_latency_ms.p99)),
    ("server RSS MB: start", _rss("start")),
    ("server RSS MB: max in the slow phase", _rss("max_slow")),
    ("server RSS MB: max after it", _rss("max_after")),
    ("server RSS MB: end", _rss("end")),
    ("commit p99 ms: slow phase", _commit("slow")),
    ("commit p99 ms: after it", _commit("after")),
    ("commit p99 ms: whole run", _commit("run")),
]


def _member_table(r: Result) -> list[str]:
    lines = [
        "| member | its rooms' msgs/s | expected | delivered (ack never came) | lost (holes / tail) | dup"
        " | out of order | disconnects (noticed at s) | catch-up s | lagging s | max latency s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    worst_first = sorted(r.slow_members, key=lambda m: (-m.lost, -m.disconnects, -_nan_high(m.catch_up_s)))
    for m in worst_first:
        at = f" ({m.disconnected_at_s:.1f})" if m.disconnects else ""
        lines.append(
            f"| {m.member} | {m.delivery_rate:,.0f} | {m.expected:,} | {m.delivered:,} ({m.unacked:,})"
            f" | {m.lost:,} ({m.lost_in_gaps:,} / {m.lost_at_tail:,}) | {m.duplicated:,} | {m.out_of_order:,}"
            f" | {m.disconnects}{at} | {_f(m.catch_up_s)} | {_f(m.lagging_s, 1)} | {_f(m.max_latency_ms / 1000)} |"
        )
    return lines


def _nan_high(value: float) -> float:
    return math.inf if math.isnan(value) else value


def plot(result: Result, path: Path) -> Path:
    """Delivery p99 per second (slow members, the rest), server RSS, and commit p99 per second (ours)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (lat, rss, commit) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    t = [row.t for row in result.timeline]
    lat.plot(t, [row.slow_p99_ms for row in result.timeline], label="slow members p99")
    lat.plot(t, [row.p99_ms for row in result.timeline], label="full-speed members p99")
    lat.set_yscale("log")
    lat.set_ylabel("delivery ms")
    lat.legend(fontsize=8)
    samples = result.server_resources
    rss.plot([s["t"] for s in samples], [s["rss_mb"] for s in samples], color="tab:red")
    rss.set_ylabel("server RSS MB")
    with_commit = [s for s in samples if "commit_p99_ms" in s]
    if with_commit:
        commit.plot([s["t"] for s in with_commit], [s["commit_p99_ms"] for s in with_commit], label="commit p99")
        commit.plot([s["t"] for s in with_commit], [s.get("commit_ms", math.nan) for s in with_commit], label="mean")
        commit.legend(fontsize=8)
    else:
        commit.text(0.5, 0.5, "no /metrics (no commit histogram)", ha="center", va="center", transform=commit.transAxes)
    commit.set_ylabel("commit ms (per second)")
    commit.set_xlabel("second")
    for ax in (lat, rss, commit):
        ax.axvline(result.slow_phases.slow_for_s, color="grey", linestyle="--", linewidth=1)
    lat.set_title(f"{result.scenario} — {result.server['name']} (dashed: end of the slow phase)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

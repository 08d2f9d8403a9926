"""A Markdown report with PNG plots for one or more results (matplotlib, headless)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from bench import slowreport, stress
from bench.result import Percentiles, Ramp, Result


def _fmt(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.2f}" if isinstance(value, float) and abs(value) < 100 else f"{value:,.0f}"


def plots(result: Result, directory: Path, stem: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    t = [row.t for row in result.timeline]
    if t:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(t, [row.sent for row in result.timeline], label="sent msgs/s")
        ax.plot(t, [row.acked for row in result.timeline], label="acked msgs/s")
        ax2 = ax.twinx()
        ax2.plot(t, [row.delivered for row in result.timeline], color="tab:green", label="deliveries/s")
        ax.set_xlabel("second")
        ax.set_ylabel("messages/s")
        ax2.set_ylabel("deliveries/s")
        fig.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{result.scenario} — {result.server['name']}: throughput")
        made.append(_save(fig, directory / f"{stem}-throughput.png"))
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(t, [row.p50_ms for row in result.timeline], label="p50")
        ax.plot(t, [row.p99_ms for row in result.timeline], label="p99")
        ax.set_xlabel("second")
        ax.set_ylabel("delivery latency (ms)")
        ax.legend(fontsize=8)
        ax.set_title(f"{result.scenario} — {result.server['name']}: delivery latency over time")
        made.append(_save(fig, directory / f"{stem}-latency.png"))
    lat = result.delivery_latency_ms.by_label()  # p50 to max
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(list(lat), [0 if math.isnan(v) else v for v in lat.values()])
    ax.set_ylabel("ms")
    ax.set_title(f"{result.scenario} — {result.server['name']}: delivery latency distribution")
    made.append(_save(fig, directory / f"{stem}-distribution.png"))
    if result.server_resources:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ts = [s["t"] for s in result.server_resources]
        ax.plot(ts, [s["cpu_percent"] for s in result.server_resources], label="CPU %")
        ax.set_ylabel("CPU % (100 = one core)")
        ax2 = ax.twinx()
        ax2.plot(ts, [s["rss_mb"] for s in result.server_resources], color="tab:red", label="RSS MB")
        ax2.set_ylabel("RSS MB")
        ax.set_xlabel("second")
        fig.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{result.scenario} — {result.server['name']}: server CPU and memory")
        made.append(_save(fig, directory / f"{stem}-server.png"))
    internals = [s for s in result.server_resources if "loop_lag_ms" in s]
    if internals:  # our server's /metrics, scraped each second (the peers have none)
        made.append(_internals_plot(result, internals, directory / f"{stem}-internals.png"))
    if result.slow_phases.slow_for_s > 0:  # NaN (not slow-readers) compares False
        made.append(slowreport.plot(result, directory / f"{stem}-slow.png"))
    return made


def _internals_plot(result: Result, internals: list[dict[str, float]], path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ts = [s["t"] for s in internals]
    top.plot(ts, [s["loop_lag_ms"] for s in internals], label="event-loop lag ms (mean of the second)")
    top.plot(ts, [s.get("commit_ms", math.nan) for s in internals], label="commit ms (mean of the second)")
    top.set_ylabel("ms")
    bottom.plot(ts, [s["outbox_mb"] for s in internals], label="websocket outboxes MB")
    bottom.set_ylabel("MB")
    queue = bottom.twinx()
    queue.plot(ts, [s["ingest_queue"] for s in internals], color="tab:red", label="ingest queue (messages)")
    queue.set_ylabel("messages")
    bottom.set_xlabel("second")
    fig.legend(loc="lower right", fontsize=8)
    top.set_title(f"{result.scenario} — {result.server['name']}: server internals (/metrics each second)")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def stress_plot(ramps: list[Ramp], path: Path) -> Path:
    """Per target: deliveries/s achieved and delivery p99 against the offered rate, one point per ramp step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ramp in ramps:
        steps = sorted(ramp.steps, key=lambda s: s.rate)
        rates = [s.rate for s in steps]
        line = left.plot(rates, [s.deliveries_per_s for s in steps], marker="o", label=ramp.target)
        right.plot(rates, [s.p99_ms for s in steps], marker="o", color=line[0].get_color())
        failed = [s for s in steps if not s.ok]
        right.plot([s.rate for s in failed], [s.p99_ms for s in failed], "x", color="red", markersize=10)
    bound = ramps[0].p99_bound_ms if ramps else 100
    right.axhline(bound, color="grey", linestyle="--", linewidth=1)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("offered msgs/s")
    left.set_yscale("log")
    left.set_ylabel("deliveries/s achieved")
    right.set_yscale("log")
    right.set_ylabel(f"delivery p99 ms (bound {bound:g}, x = failed step)")
    left.legend(fontsize=8)
    shape = ramps[0].shape if ramps else ""
    fig.suptitle(f"stress ramp ({shape} shape)")
    return _save(fig, path)


def markdown(
    results: list[Result], images: dict[str, list[Path]], relative_to: Path, command: str, *, intro: str = ""
) -> str:
    lines = [f"# Benchmark: {results[0].scenario}", "", f"Command: `{command}`", "", f"{results[0].description}", ""]
    if results[0].parameters.get("arithmetic"):
        lines += [f"Offered load: {results[0].parameters['arithmetic']}", ""]
    m = results[0].machine
    lines += [
        f"Machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}; git {results[0].git_commit};"
        f" {results[0].started_at}",
        "",
        *([intro, "", "## Every figure", ""] if intro else []),
        "| | " + " | ".join(r.server["name"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    rows: list[tuple[str, Callable[[Result], float]]] = [
        ("offered msgs/s", lambda r: r.throughput.offered_msgs_per_s),
        ("acked msgs/s", lambda r: r.throughput.acked_msgs_per_s),
        ("deliveries/s", lambda r: r.throughput.deliveries_per_s),
        ("expected deliveries", lambda r: r.counts.expected_deliveries),
        ("delivered", lambda r: r.counts.delivered),
        ("lost", lambda r: r.counts.lost),
        ("duplicated", lambda r: r.counts.duplicated),
        ("out of order", lambda r: r.counts.out_of_order),
        # Old results have no such count (0); a server that kept up has none.
        ("delivered, ack not yet back", lambda r: r.counts.delivered_unacked),
        ("rejected", lambda r: r.counts.rejected),
        *[
            (f"delivery {k} ms", _latency(lambda r: r.delivery_latency_ms, k))
            for k in ("p50", "p90", "p95", "p99", "p99.9", "max")
        ],
        *[(f"ack {k} ms", _latency(lambda r: r.ack_latency_ms, k)) for k in ("p50", "p99")],
        ("server CPU % (mean)", lambda r: _mean(r.server_resources, "cpu_percent")),
        ("server CPU % (busiest second)", _peak("cpu_percent")),
        # The load generator's share of its core over the load: next to the server's, so that a reader sees
        # whose limit a number is (above CLIENT_BOUND_CPU the run is marked client-bound).
        ("client CPU % (busiest worker)", lambda r: max(r.client_cpu_percent, default=float("nan"))),
        ("server CPU µs per message", lambda r: r.server_cpu_us_per_message),
        ("server RSS MB (max)", lambda r: max((s["rss_mb"] for s in r.server_resources), default=float("nan"))),
        # Ours only (from /metrics each second); n/a for the peers.
        ("server outbox MB (max)", _peak("outbox_mb")),
        ("server ingest queue (max)", _peak("ingest_queue")),
        ("event-loop lag ms (worst second)", _peak("loop_lag_ms")),
    ]
    if any(r.wire.deflate_members or r.wire.declined for r in results):
        rows += WIRE_ROWS
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(get(r)) for r in results) + " |")
    for r in results:
        lines.append(f"\n- **{r.server['name']}** {headroom(r)}")
        drift = endurance_summary(r)
        if drift:
            lines.append(f"\n- **{r.server['name']}** over the run: {drift}")
        if r.churn:
            lines.append(
                f"\n- **{r.server['name']}** churners: "
                + ", ".join(f"{k.replace('_', ' ')} {v:,.1f}" for k, v in r.churn.items())
            )
        stalled = int(r.parameters.get("stalled_members", 0))
        if stalled:
            lines.append(
                f"\n- **{r.server['name']}** slow consumers: {stalled} members stopped reading and are left out of"
                f" the expected deliveries; the rest of the room got {r.counts.delivered:,} of"
                f" {r.counts.expected_deliveries:,} ({r.counts.lost:,} lost), delivery p99"
                f" {_fmt(r.delivery_latency_ms.p99)} ms"
            )
        for key in ("mean_batch_size", "mean_commit_ms", "mean_loop_lag_ms", "slow_consumer_disconnects_total"):
            if key in r.server_metrics:
                lines.append(f"\n- {r.server['name']} {key.replace('_', ' ')}: {r.server_metrics[key]:,.2f}")
        for note in r.notes:
            lines.append(f"\n- **{r.server['name']}**: {note}")
        for error in r.errors[:5]:
            lines.append(f"\n- {r.server['name']} error: `{error[:200]}`")
    lines.append("")
    lines += slowreport.markdown(results)
    for name, paths in images.items():
        lines.append(f"### {name}\n")
        lines += [f"![{p.stem}]({p.relative_to(relative_to)})" for p in paths]
        lines.append("")
    return "\n".join(lines)


# permessage-deflate (issue 18): shown when a member of any of the runs offered it.
WIRE_ROWS: list[tuple[str, Callable[[Result], float]]] = [
    ("members with permessage-deflate", lambda r: r.wire.deflate_members),
    ("members without it", lambda r: r.wire.plain_members),
    ("of those, offered it and were declined", lambda r: r.wire.declined),
    ("wire bytes per delivered message, deflate members", lambda r: r.wire.deflate_bytes_per_message),
    ("wire bytes per delivered message, plain members", lambda r: r.wire.plain_bytes_per_message),
    ("messages deflated by the server", lambda r: r.server_metrics.get("ws_deflate_total", float("nan"))),
    ("compressed frames sent", lambda r: r.server_metrics.get("ws_compressed_frames_total", float("nan"))),
]


def compression_summary(results: list[Result]) -> str:
    """The figures issue 18 compares, a column per run; with two runs, the second over the first as well."""
    rows: list[tuple[str, Callable[[Result], float]]] = [
        ("acked msgs/s", lambda r: r.throughput.acked_msgs_per_s),
        ("deliveries/s", lambda r: r.throughput.deliveries_per_s),
        ("wire bytes / delivered message, deflate members", lambda r: r.wire.deflate_bytes_per_message),
        ("wire bytes / delivered message, plain members", lambda r: r.wire.plain_bytes_per_message),
        ("server CPU % (mean)", lambda r: _mean(r.server_resources, "cpu_percent")),
        ("server CPU µs per message", lambda r: r.server_cpu_us_per_message),
        ("delivery p50 ms", lambda r: r.delivery_latency_ms.p50),
        ("delivery p99 ms", lambda r: r.delivery_latency_ms.p99),
        ("delivery p50 ms, deflate members", lambda r: r.wire.deflate_latency_ms.p50),
        ("delivery p99 ms, deflate members", lambda r: r.wire.deflate_latency_ms.p99),
        ("delivery p50 ms, plain members", lambda r: r.wire.plain_latency_ms.p50),
        ("delivery p99 ms, plain members", lambda r: r.wire.plain_latency_ms.p99),
        ("lost", lambda r: r.counts.lost),
        ("duplicated", lambda r: r.counts.duplicated),
        ("messages deflated (ws_deflate_total)", lambda r: r.server_metrics.get("ws_deflate_total", float("nan"))),
        (
            "compressed frames (ws_compressed_frames_total)",
            lambda r: r.server_metrics.get("ws_compressed_frames_total", float("nan")),
        ),
        ("client CPU % (busiest worker)", lambda r: max(r.client_cpu_percent, default=float("nan"))),
    ]
    two = len(results) == 2
    names = [r.server["name"] for r in results]
    ratio_name = f" | {_setting(names[1])} / {_setting(names[0])} |" if two else " |"
    lines = [
        "| | " + " | ".join(names) + ratio_name,
        "|---|" + "---|" * (len(results) + two),
    ]
    for label, get in rows:
        values = [get(r) for r in results]
        ratio = ""
        if two:
            a, b = values
            ratio = f" | {b / a:,.2f}x" if a and not math.isnan(a) and not math.isnan(b) else " | n/a"
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + ratio + " |")
    return "\n".join(lines)


def _setting(name: str) -> str:
    """A column's short name: its ws-compression setting when its name has one."""
    at = name.find("ws-compression ")
    return name[at:].rstrip(")") if at >= 0 else name


def headroom(result: Result) -> str:
    """Whose limit the run's numbers could be: the server's and the load generator's CPU, side by side."""
    client = max(result.client_cpu_percent, default=float("nan"))
    server = _peak("cpu_percent")(result)
    if math.isnan(client):
        return f"CPU: server {_fmt(server)}% of a core at most; the load generator's was not measured"
    verdict = (
        "client-bound: the load generator's core was the limit, the server may do more"
        if result.client_bound
        else f"the load generator had {100 - client:,.0f}% of its core to spare"
    )
    return f"CPU: server {_fmt(server)}% of a core at most, load generator {_fmt(client)}% (busiest worker): {verdict}"


def _latency(distribution: Callable[[Result], Percentiles], label: str) -> Callable[[Result], float]:
    return lambda r: distribution(r).by_label()[label]


def _peak(key: str) -> Callable[[Result], float]:
    return lambda r: max((s[key] for s in r.server_resources if key in s), default=float("nan"))


def _mean(samples: list[dict[str, float]], key: str) -> float:
    values = [s[key] for s in samples]
    return sum(values) / len(values) if values else float("nan")


def endurance_summary(result: Result) -> str:
    """RSS growth per minute (least squares over the samples) and p99 drift (first vs last fifth of the run)."""
    samples = result.server_resources
    rows = [row for row in result.timeline if not math.isnan(row.p99_ms)]
    if len(samples) < 30 or len(rows) < 30:
        return ""
    n = len(samples)
    mean_t = sum(s["t"] for s in samples) / n
    mean_r = sum(s["rss_mb"] for s in samples) / n
    cov = sum((s["t"] - mean_t) * (s["rss_mb"] - mean_r) for s in samples)
    var = sum((s["t"] - mean_t) ** 2 for s in samples) or 1.0
    per_minute = cov / var * 60
    fifth = max(1, len(rows) // 5)
    first = sorted(r.p99_ms for r in rows[:fifth])[fifth // 2]
    last = sorted(r.p99_ms for r in rows[-fifth:])[fifth // 2]
    return (
        f"RSS {per_minute:+.2f} MB/min (least squares over {n} samples); per-second p99, median of the first"
        f" fifth {first:.1f} ms, of the last fifth {last:.1f} ms (drift {last - first:+.1f} ms)"
    )


def rate_text(rate: float) -> str:
    """Whole messages/s, except the sub-10 rates a ramp reaches when it steps down."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"


def stress_table(ramps: list[Ramp]) -> str:
    lines = [
        "| target | shape | max sustainable msgs/s | deliveries/s | p99 at max (ms) | server / client CPU % at max"
        " | whose limit | between (offered) | next step failed on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ramps:
        at_least = "≥ " if r.lower_bound else ""
        lines.append(
            f"| {r.target} | {r.shape} | {at_least}{r.max_sustainable_msgs_per_s:,.0f}"
            f" | {at_least}{r.max_sustainable_deliveries_per_s:,.0f} | {r.p99_at_max_ms:,.1f}"
            f" | {stress.cpu_at_max(r)} | {stress.ramp_limit(r)} | {stress.bracket(r)} | {r.limited_by} |"
        )
    lines += [
        "",
        "CPU % of one core: the server's busiest second, the load generator's busiest worker over the load."
        " Whose limit: that of the first step above the maximum that failed (client: the load generator"
        " saturated its core and the server did not). Between: the fastest step that passed and the slowest"
        " that failed; after the first failing step the ramp bisects until they are within"
        f" {stress.NARROW_TO:.0%} (at most {stress.MAX_BISECTIONS} steps).",
    ]
    if any(r.lower_bound for r in ramps):
        lines += [
            "",
            "≥: the ramp ended on a client-bound step (the load generator saturated its core) or ran out of"
            " steps, not on a step the server failed; the server's maximum is at least this.",
        ]
    return "\n".join(lines)


def steps_table(ramps: list[Ramp]) -> str:
    """Every step of every ramp: what was offered, what came back, and the verdict."""
    lines = [
        "| target | offered msgs/s | acked msgs/s | deliveries/s | p50 ms | p99 ms | lost | server CPU % (max)"
        " | client CPU % (max) | slow consumers cut | verdict | whose limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ramps:
        for s in r.steps:
            lines.append(
                f"| {r.target} | {rate_text(s.rate)} | {s.acked_msgs_per_s:,.0f}"
                f" | {s.deliveries_per_s:,.0f} | {s.p50_ms:,.1f} | {s.p99_ms:,.1f} | {s.lost:,}"
                f" | {s.server_cpu_percent:,.0f}"
                f" | {s.client_cpu_percent:,.0f} | {s.slow_consumer_disconnects:,.0f} | {s.why}"
                f" | {stress.step_limit(s)} |"
            )
    crossed = [(r, s) for r in ramps for s in r.steps if not math.isnan(s.cross_p99_ms)]
    if crossed:
        lines += [
            "",
            "Deliveries of messages sent through another process of the cluster (the NOTIFY hop and the read):",
            "",
        ]
        lines += ["| target | offered msgs/s | cross-process p50 ms | cross-process p99 ms |", "|---|---|---|---|"]
        for r, s in crossed:
            lines.append(f"| {r.target} | {rate_text(s.rate)} | {s.cross_p50_ms:,.1f} | {s.cross_p99_ms:,.1f} |")
    return "\n".join(lines)


def ratio_table(results: list[Result], ramps: list[Ramp]) -> str:
    ours = [r for r in results if r.server["name"].startswith("minitalk-trio")]
    peers = [r for r in results if not r.server["name"].startswith("minitalk-trio")]
    by_name = {r.target: r for r in ramps}
    lines = [
        "| ours | peer | max msgs/s | max deliveries/s | p99 at the scenario's load (peer / ours) |",
        "|---|---|---|---|---|",
    ]
    for o in ours:
        for p in peers:
            ro, rp = by_name.get(o.server["name"]), by_name.get(p.server["name"])
            msgs = _ratio(ro, rp, lambda r: r.max_sustainable_msgs_per_s)
            dels = _ratio(ro, rp, lambda r: r.max_sustainable_deliveries_per_s)
            p99 = p.delivery_latency_ms.p99 / o.delivery_latency_ms.p99 if o.delivery_latency_ms.p99 else float("nan")
            lines.append(f"| {o.server['name']} | {p.server['name']} | {msgs} | {dels} | {p99:,.1f}x |")
    return "\n".join(lines)


def _ratio(ours: Ramp | None, peer: Ramp | None, maximum: Callable[[Ramp], float]) -> str:
    if ours is None or peer is None:
        return "(run with --stress)"
    a, b = maximum(ours), maximum(peer)
    # A lower-bound maximum (client-bound, or out of steps): ours only → the ratio is at least this; the peer's →
    # at most; both → neither.
    bound = {(True, False): "≥ ", (False, True): "≤ ", (True, True): "~ "}.get((ours.lower_bound, peer.lower_bound), "")
    return f"{bound}{a / b:,.1f}x" if b else "∞ (peer sustained none)"

"""``python -m bench compare OLD NEW``: is NEW worse than OLD by more than the noise of this machine?

Each side is one or more runs of the same scenario: a result, a record of repeats (``run --repeat N``: N runs,
each on a freshly started server), a directory of them, or several of them (``--old A B C --new D E F``).
Per metric, over the runs of each side:

- **center**: the median of the runs (rates and latencies alike). One slow run out of five moves a median
  little, a mean a lot: tail latencies on this shared 2-core machine jump from run to run (five quick runs of one
  commit had p99s of 12.3, 12.6, 18.7, 21.6 and 125 ms, the last while another job's tests ran).
- **spread**: the relative interquartile range of a side, ``IQR / median``, with the inclusive quartiles of
  ``statistics.quantiles``: for 5 runs the 2nd to the 4th smallest, so one wild run does not blow it up (the runs
  above: 48%, where the min-max range is 604% and would excuse any regression); for 2 or 3 runs half the
  min-max range. A single run has no spread.
- **threshold**: ``max(floor, k x max(spread OLD, spread NEW))`` with ``k = 2`` (``--spread-factor``). Simulated
  (20,000 pairs of sides of the same code, with the 20% floor of the p99s), the share of comparisons a metric is
  called regressed on by noise alone, and the share of real slow-downs caught, for noise that is lognormal
  (sigma 0.3), uniform (x0.5-x1.5) or spiky (a fifth of the runs x1.8):

  | runs a side | noise alone called regressed | p99 x2 caught | p99 x3 caught |
  |---|---|---|---|
  | 3 | 5.5-6.8% | 72-90% | 93-97% |
  | 5 | 0.6-2.8% | 58-68% | 92-95% |
  | 7 | 0.2-0.7% | 58-76% | 93-97% |

  So 5 runs a side at least, 7 for ``make bench-check``. The floors stop a lucky tight set of runs from making a
  tiny move count: 5% for rates (open-loop rates are set by the schedule and hardly vary), 10% for p50, 20% for
  the p99s.
- **verdict** per metric: ``regressed`` when the median moved the wrong way by more than the threshold,
  ``improved`` when it moved the right way by more, else ``no change``. Overall: ``regressed`` if any metric
  regressed (exit 1; but see runs beside other work below), else ``improved`` if any improved, else
  ``no change`` (exit 0).
- **runs beside other work are set aside**: contention that lasts through all of NEW's runs moves its median and
  leaves its spread tight (seven check runs beside another job's tests: p50 +36% at a 4% spread), which no spread
  can tell from a regression. So each second the machine's CPU is sampled besides the server's and the workers'
  (``other_cpu``), and a run during which other processes used more than 25% of a core is set aside, on either
  side, as long as 3 runs of that side are left; then the side is decided on the rest (and is weak if fewer than
  5 are left). A side with fewer than 3 such quiet runs keeps them all and is *busy*: when NEW is busy, rate and
  latency regressions make the verdict ``inconclusive`` (exit 3): rerun when the machine is quiet. Loss and
  duplication count in every run, set aside or not. (Other processes include a PostgreSQL server's: a run on
  ``--database postgresql://`` is always "beside other work".)
- **a slower machine**: the host's other tenants can slow every core without any process here showing it: one
  same-code check with no other process running took 50% more server CPU for the same messages, p50 +31%. So
  before and after each run a fixed piece of CPU work (``bench.result.reference_ms``) is timed; when it took more
  than 10% longer during NEW's median run than OLD's, rate and latency regressions are ``inconclusive`` too. (That
  episode came before the measurement: that it would have shown there is not demonstrated. One timing varies
  by +-15% on a quiet machine; the medians of two sides of seven runs agreed within 1%.)
- **loss and duplication are exact**: no threshold and no median. The worst run of NEW is compared with the
  worst run of OLD; any increase regresses (a baseline with no loss: any lost message regresses).
- **fewer than 5 runs on a side**: a *weak* verdict, said so on the verdict line. The spread of a side with runs
  still counts, and the floors are widened to what single runs of the same code differ by here: 10% for rates,
  25% for p50, 100% for the p99s (two single quick runs of one commit have differed by +87% in p99). Use
  ``run --repeat 5`` (or more) for a verdict worth the name.

Under the table: how much CPU other processes used during each side's runs (the machine's CPU, sampled each
second, less the server's and the load workers'), the runs set aside, and a note when a side was busy.

``--threshold F`` replaces every floor by F (no widening either); ``--spread-factor`` sets k. Exit codes: 0 no
regression, 1 a regression, 3 inconclusive (see above), 2 a usage error (a missing, unreadable or invalid file,
record kinds or scenarios mixed, bad arguments).

Two stress records (``run stress``, ``peers --stress``), one a side, compare each target's maximum sustainable
msgs/s and deliveries/s with a fixed threshold (default 10%): a ramp step is x1.5, so a lost step always shows.
A target missing from NEW is a regression too.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import msgspec

from bench.result import Ramp, Result, StressRecord
from bench.stress import bracket, cpu_at_max, ramp_limit

MIN_RUNS = 5  # fewer runs than this on a side: a weak verdict, widened floors
SPREAD_FACTOR = 2.0
DISTURBED = 25.0  # % of one core that other processes used during a run: the run is set aside...
MIN_KEPT = 3  # ...if at least this many of its side's runs are left; else the side keeps all and is busy
SLOWER_BY = 0.10  # the reference workload took this much longer during NEW: the machine itself was slower


class Metric(msgspec.Struct, frozen=True):
    label: str
    get: Callable[[Result], float]
    higher_is_better: bool
    kind: str  # "rate", "median" (p50), "tail" (p99), "exact" (counts: any increase regresses)


METRICS: tuple[Metric, ...] = (
    Metric("acked msgs/s", lambda r: r.throughput.acked_msgs_per_s, True, "rate"),
    Metric("deliveries/s", lambda r: r.throughput.deliveries_per_s, True, "rate"),
    Metric("delivery p50 ms", lambda r: r.delivery_latency_ms.p50, False, "median"),
    Metric("delivery p99 ms", lambda r: r.delivery_latency_ms.p99, False, "tail"),
    Metric("ack p99 ms", lambda r: r.ack_latency_ms.p99, False, "tail"),
    Metric("lost", lambda r: float(r.counts.lost), False, "exact"),
    Metric("duplicated", lambda r: float(r.counts.duplicated), False, "exact"),
)
# The floor of the threshold by kind of metric: with MIN_RUNS or more runs a side, and with fewer (weak).
FLOORS = {"rate": 0.05, "median": 0.10, "tail": 0.20}
WEAK_FLOORS = {"rate": 0.10, "median": 0.25, "tail": 1.00}
KIND_NAMES = {"rate": "rates", "median": "p50", "tail": "p99"}

NO_CHANGE, IMPROVED, REGRESSED, UNKNOWN = "no change", "improved", "regressed", "n/a"
INCONCLUSIVE = "inconclusive"


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One metric's decision. Rates and latencies: medians, relative spreads (NaN: one run), relative change.
    Exact counts: the worst run of each side, and the change as a difference."""

    label: str
    kind: str
    old: float
    new: float
    old_spread: float
    new_spread: float
    change: float
    threshold: float
    verdict: str


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    rows: list[Row]
    old_runs: int
    new_runs: int
    spread_factor: float
    floor: float | None = None  # --threshold: one floor for every metric instead of FLOORS / WEAK_FLOORS
    old_other_cpu: float = math.nan  # the median run's CPU used by other processes, % of one core (other_cpu)
    new_other_cpu: float = math.nan
    old_set_aside: int = 0  # runs beside other work, not decided on (old_runs counts the runs decided on)
    new_set_aside: int = 0
    old_busy: bool = False  # fewer than MIN_KEPT runs of the side were quiet: all kept
    new_busy: bool = False
    old_reference_ms: float = math.nan  # the median run's reference workload (bench.result.reference_ms)
    new_reference_ms: float = math.nan
    old_client_cpu: float = math.nan  # the median run's busiest load worker, % of its core (client_cpu)
    new_client_cpu: float = math.nan

    @property
    def slower(self) -> bool:
        """The machine ran the reference workload more than SLOWER_BY slower during NEW (False when unknown)."""
        return self.new_reference_ms > self.old_reference_ms * (1 + SLOWER_BY)

    @property
    def weak(self) -> bool:
        return min(self.old_runs, self.new_runs) < MIN_RUNS

    @property
    def regressed(self) -> list[str]:
        return [r.label for r in self.rows if r.verdict == REGRESSED]

    @property
    def improved(self) -> list[str]:
        return [r.label for r in self.rows if r.verdict == IMPROVED]

    @property
    def verdict(self) -> str:
        """regressed, inconclusive (only rates or latencies regressed, and NEW was busy), improved or no change.
        Loss and duplication regress whatever the machine did."""
        if any(r.verdict == REGRESSED and r.kind == "exact" for r in self.rows):
            return REGRESSED
        if self.regressed:
            return INCONCLUSIVE if self.new_busy or self.slower else REGRESSED
        return IMPROVED if self.improved else NO_CHANGE

    def verdict_line(self) -> str:
        named = self.regressed or self.improved
        line = f"verdict: {self.verdict}" + (f": {', '.join(named)}" if named else "")
        if self.verdict == INCONCLUSIVE:
            why = []
            if self.new_busy:
                why.append(
                    f"fewer than {MIN_KEPT} of NEW's {self.new_runs} runs had the machine to themselves (other"
                    f" processes used {_cpu(self.new_other_cpu)} of a core in the median run)"
                )
            if self.slower:
                why.append(
                    f"the machine itself was slower during NEW (the reference workload took"
                    f" {relative_change(self.old_reference_ms, self.new_reference_ms):.0%} longer)"
                )
            line += f" regressed, but {' and '.join(why)}: rerun when it is quiet"
        if self.weak:
            widened = (
                f"the floor is {self.floor:.0%} (--threshold)"
                if self.floor is not None
                else "the floors are widened to "
                + ", ".join(f"{KIND_NAMES[k]} {f:.0%}" for k, f in WEAK_FLOORS.items())
            )
            line += (
                f" (weak: {_runs(self.old_runs)} vs {_runs(self.new_runs)}, fewer than {MIN_RUNS} a side, so"
                f" {widened}; run --repeat 5 on both sides for a firm verdict)"
            )
        return line

    def table(self) -> str:
        head = f"{'metric':<18}{'old':>12}{'spread':>9}{'new':>12}{'spread':>9}{'change':>10}{'threshold':>11}  verdict"
        lines = [head, "-" * (len(head) + 8)]
        for r in self.rows:
            if r.kind == "exact":
                a, b = f"{r.old:>12,.0f}", f"{r.new:>12,.0f}"
                change, threshold = f"{r.change:>+10,.0f}", f"{'any':>11}"
            else:
                a, b = f"{r.old:>12,.2f}", f"{r.new:>12,.2f}"
                change, threshold = f"{r.change:>+10.1%}", f"{r.threshold:>11.1%}"
            lines.append(
                f"{r.label:<18}{a}{_spread(r.old_spread)}{b}{_spread(r.new_spread)}{change}{threshold}  {r.verdict}"
            )
        return "\n".join(lines)

    def report(self) -> str:
        what = "worst run" if self.old_runs > 1 or self.new_runs > 1 else "the run"
        return "\n".join(
            [
                f"old: {_runs(self.old_runs)}{_aside(self.old_set_aside)}, new: {_runs(self.new_runs)}"
                f"{_aside(self.new_set_aside)}; rates and latencies: the median of the runs, spread = interquartile"
                f" range / median; lost, duplicated: {what} (of all)",
                f"threshold = max(floor, {self.spread_factor:g} x the larger spread); lost, duplicated: any increase",
                "",
                self.table(),
                "",
                *self.client_lines(),
                *self.machine_lines(),
                self.verdict_line(),
            ]
        )

    def client_lines(self) -> list[str]:
        """The load generator's CPU on each side: whose limit the figures could be (a note, decides nothing)."""
        if math.isnan(self.old_client_cpu) and math.isnan(self.new_client_cpu):
            return []
        return [
            f"load generator (median run, busiest worker): {_cpu(self.old_client_cpu)} of its core during OLD,"
            f" {_cpu(self.new_client_cpu)} during NEW (past 90% a run is client-bound: the limit may be the"
            " client's)"
        ]

    def machine_lines(self) -> list[str]:
        """How busy the machine was with other work during each side's runs, when the results say (a note: it
        changes no verdict, but a regression measured beside someone else's test suite may be theirs)."""
        lines = []
        if not (math.isnan(self.old_other_cpu) and math.isnan(self.new_other_cpu)):
            lines.append(
                f"other processes on the machine (median run): {_cpu(self.old_other_cpu)} of a core during OLD,"
                f" {_cpu(self.new_other_cpu)} during NEW"
            )
        if not (math.isnan(self.old_reference_ms) and math.isnan(self.new_reference_ms)):
            change = relative_change(self.old_reference_ms, self.new_reference_ms)
            lines.append(
                f"reference workload (fixed CPU work, median run): {self.old_reference_ms:.1f} ms during OLD,"
                f" {self.new_reference_ms:.1f} ms during NEW" + ("" if math.isnan(change) else f" ({change:+.1%})")
            )
        if not lines:
            return []
        if self.old_set_aside or self.new_set_aside:
            lines.append(
                f"set aside: runs beside more than {DISTURBED:.0f}% of a core of other work (OLD {self.old_set_aside},"
                f" NEW {self.new_set_aside})"
            )
        if self.new_busy:
            lines.append("note: NEW ran on a busy machine: a slower rate or latency is not called a regression")
        if self.slower:
            lines.append("note: NEW ran on a slower machine: a slower rate or latency is not called a regression")
        if self.old_busy:
            lines.append("note: OLD ran on a busy machine: its spread widens every threshold; remeasure it when quiet")
        return [*lines, ""]


def _aside(n: int) -> str:
    return f" ({n} set aside)" if n else ""


def quiet_runs(runs: list[Result]) -> tuple[list[Result], bool]:
    """The runs during which other processes used at most DISTURBED % of a core (runs that do not say are quiet),
    if there are MIN_KEPT of them, and False; else all the runs, and True (a busy side)."""
    quiet = [r for r in runs if not other_cpu(r) > DISTURBED]
    if len(quiet) >= min(MIN_KEPT, len(runs)):
        return quiet, False
    return runs, True


def reference(result: Result) -> float:
    """The reference workload's CPU ms around a run (before and after, averaged); NaN for results without it."""
    values = result.machine.get("reference_ms")
    return statistics.fmean(values) if isinstance(values, list) and values else math.nan


def server_cpu(result: Result) -> float:
    """The server's mean CPU over the run's samples, % of one core; NaN without samples."""
    values = [s["cpu_percent"] for s in result.server_resources if "cpu_percent" in s]
    return statistics.fmean(values) if values else math.nan


def client_cpu(result: Result) -> float:
    """The busiest load worker's CPU over the load, % of its core; NaN for results without it."""
    return max(result.client_cpu_percent, default=math.nan)


def _cpu(value: float) -> str:
    return "unknown" if math.isnan(value) else f"{value:.0f}%"


def other_cpu(result: Result) -> float:
    """CPU that processes other than the server and the load workers used during a run, % of one core: the
    machine's mean (each second's sample) less the server's mean less the workers'. NaN for results written
    before the machine was sampled. Approximate: the workers' figure covers their whole life, not only the load."""
    samples = [s for s in result.server_resources if "machine_cpu_percent" in s]
    if not samples:
        return math.nan
    machine = statistics.fmean(s["machine_cpu_percent"] for s in samples)
    server = statistics.fmean(s.get("cpu_percent", 0.0) for s in samples)
    return max(0.0, machine - server - sum(result.client_cpu_percent))


def _runs(n: int) -> str:
    return f"{n} run" + ("s" if n != 1 else "")


def _spread(value: float) -> str:
    return f"{'-':>9}" if math.isnan(value) else f"{value:>9.1%}"


def center(values: Sequence[float]) -> float:
    """The median of the values that are numbers (a run with no deliveries has a NaN p99); NaN if none is."""
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def spread(values: Sequence[float]) -> float:
    """The relative interquartile range, IQR / median (inclusive quartiles: for 2-3 values half the min-max
    range); NaN for fewer than two numbers; 0 when all are 0."""
    known = [v for v in values if not math.isnan(v)]
    if len(known) < 2:
        return math.nan
    mid = statistics.median(known)
    low, _, high = statistics.quantiles(known, n=4, method="inclusive")
    if mid == 0:
        return 0.0 if high == low else math.inf
    return (high - low) / abs(mid)


def relative_change(old: float, new: float) -> float:
    if math.isnan(old) or math.isnan(new):
        return math.nan
    if old == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - old) / abs(old)


def compare(
    old: Result | Sequence[Result],
    new: Result | Sequence[Result],
    *,
    floor: float | None = None,
    spread_factor: float = SPREAD_FACTOR,
) -> Comparison:
    """Decide per metric as the module docstring says. ``floor`` replaces every floor (and their widening)."""
    before = [old] if isinstance(old, Result) else list(old)
    after = [new] if isinstance(new, Result) else list(new)
    if not before or not after:
        raise ValueError("each side needs at least one run")
    old_kept, old_busy = quiet_runs(before)
    new_kept, new_busy = quiet_runs(after)
    weak = min(len(old_kept), len(new_kept)) < MIN_RUNS
    floors = WEAK_FLOORS if weak else FLOORS
    rows = []
    for metric in METRICS:
        if metric.kind == "exact":  # every run counts, set aside or not
            rows.append(_exact_row(metric, [metric.get(r) for r in before], [metric.get(r) for r in after]))
            continue
        a_values = [float(metric.get(r)) for r in old_kept]
        b_values = [float(metric.get(r)) for r in new_kept]
        a, b = center(a_values), center(b_values)
        a_spread, b_spread = spread(a_values), spread(b_values)
        known = [s for s in (a_spread, b_spread) if not math.isnan(s)]
        threshold = max(floors[metric.kind] if floor is None else floor, spread_factor * max(known, default=0.0))
        change = relative_change(a, b)
        if math.isnan(change):
            verdict = UNKNOWN
        else:
            worse = -change if metric.higher_is_better else change
            verdict = REGRESSED if worse > threshold else IMPROVED if -worse > threshold else NO_CHANGE
        rows.append(
            Row(
                label=metric.label,
                kind=metric.kind,
                old=a,
                new=b,
                old_spread=a_spread,
                new_spread=b_spread,
                change=change,
                threshold=threshold,
                verdict=verdict,
            )
        )
    return Comparison(
        rows=rows,
        old_runs=len(old_kept),
        new_runs=len(new_kept),
        spread_factor=spread_factor,
        floor=floor,
        old_other_cpu=center([other_cpu(r) for r in before]),
        new_other_cpu=center([other_cpu(r) for r in after]),
        old_set_aside=len(before) - len(old_kept),
        new_set_aside=len(after) - len(new_kept),
        old_busy=old_busy,
        new_busy=new_busy,
        old_reference_ms=center([reference(r) for r in before]),
        new_reference_ms=center([reference(r) for r in after]),
        old_client_cpu=center([client_cpu(r) for r in before]),
        new_client_cpu=center([client_cpu(r) for r in after]),
    )


def _exact_row(metric: Metric, old: list[float], new: list[float]) -> Row:
    a, b = max(old), max(new)
    verdict = REGRESSED if b > a else IMPROVED if b < a else NO_CHANGE
    return Row(
        label=metric.label,
        kind=metric.kind,
        old=a,
        new=b,
        old_spread=math.nan,
        new_spread=math.nan,
        change=b - a,
        threshold=0.0,
        verdict=verdict,
    )


def repeats_table(runs: Sequence[Result]) -> str:
    """Markdown: each run's metrics, then their median and spread, as ``compare`` will read them."""
    lines = [
        "| run | "
        + " | ".join(m.label for m in METRICS)
        + " | server CPU % (mean) | client CPU % (busiest worker) | other processes, % of a core |",
        "|---" * (len(METRICS) + 4) + "|",
    ]
    for i, run in enumerate(runs, 1):
        figures = " | ".join(f"{metric.get(run):,.2f}" for metric in METRICS)
        lines.append(
            f"| {i} | {figures} | {_cpu(server_cpu(run))} | {_cpu(client_cpu(run))} | {_cpu(other_cpu(run))} |"
        )
    cells = []
    spreads = []
    for metric in METRICS:
        values = [float(metric.get(r)) for r in runs]
        if metric.kind == "exact":
            cells.append(f"{max(values):,.0f} (worst)")
            spreads.append("")
        else:
            cells.append(f"{center(values):,.2f}")
            s = spread(values)
            spreads.append("" if math.isnan(s) else f"{s:.1%}")
    medians = [center([f(r) for r in runs]) for f in (server_cpu, client_cpu, other_cpu)]
    lines.append("| **median** | " + " | ".join(cells) + "".join(f" | {_cpu(m)}" for m in medians) + " |")
    lines.append("| **spread** | " + " | ".join(spreads) + " | | | |")
    return "\n".join(lines)


# The maxima compare_stress decides on, by their names in the records.
STRESS_METRICS: tuple[tuple[str, Callable[[Ramp], float]], ...] = (
    ("max_sustainable_msgs_per_s", lambda r: r.max_sustainable_msgs_per_s),
    ("max_sustainable_deliveries_per_s", lambda r: r.max_sustainable_deliveries_per_s),
)


def compare_stress(old: StressRecord, new: StressRecord, threshold: float = 0.10) -> tuple[str, list[str]]:
    """Per target, the maximum sustainable rates; the (target: metric) names that regressed."""
    lines = [f"{'target':<26}{'metric':<34}{'old':>14}{'new':>14}{'change':>10}", "-" * 98]
    regressed = []
    after = {r.target: r for r in new.ramps}
    for ramp in old.ramps:
        name = ramp.target
        if name not in after:
            regressed.append(f"{name}: missing")
            lines.append(f"{name:<26}missing from NEW  REGRESSED")
            continue
        for metric, maximum in STRESS_METRICS:
            a, b = maximum(ramp), maximum(after[name])
            change = (b - a) / a if a else 0.0
            bad = -change > threshold or (a > 0 and b == 0)
            if bad:
                regressed.append(f"{name}: {metric}")
            mark = "  REGRESSED" if bad else ""
            lines.append(f"{name:<26}{metric:<34}{a:>14,.0f}{b:>14,.0f}{change:>+10.1%}{mark}")
        # Not decided on: said so that a reader knows whose limit each maximum was.
        shown = (("server / client CPU % at max", cpu_at_max), ("whose limit", ramp_limit), ("between", bracket))
        for label, show in shown:
            lines.append(f"{name:<26}{label:<34}{show(ramp):>14}  ->  {show(after[name])}")
    return "\n".join(lines), regressed


def check_ramps(record: StressRecord) -> str | None:
    """Why a stress record cannot be compared (it has no ramps), or None. A ramp without a target or a maximum
    does not get this far: the record's decoder refuses it."""
    return "has no ramps" if not record.ramps else None

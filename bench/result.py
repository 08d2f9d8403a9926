"""The versioned result of one run, written as JSON under bench/results/."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

SCHEMA = 1
NAN = float("nan")


class Percentiles(msgspec.Struct, kw_only=True):
    """A latency distribution in ms (``Histogram.summary_ms``). NaN: no sample, as an empty histogram says; older
    records wrote ``{}`` for a run without such deliveries (no cluster, no slow readers), which reads the same."""

    p50: float = NAN
    p90: float = NAN
    p95: float = NAN
    p99: float = NAN
    p99_9: float = msgspec.field(default=NAN, name="p99.9")
    max: float = NAN

    def by_label(self) -> dict[str, float]:
        """Each percentile by its name in the records, p50 to max."""
        return {
            "p50": self.p50,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "p99.9": self.p99_9,
            "max": self.max,
        }


class Counts(msgspec.Struct, kw_only=True):
    """What happened to a run's messages (bench/accounting.py settles the deliveries)."""

    offered: int  # the schedule's messages over the load
    sent: int
    acked: int
    rejected: int
    expected_deliveries: int  # each accepted message once to each member of its room that reads
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    delivered_unacked: int = 0  # delivered, but the sender's ack never came back; 0 in records before the field


class Throughput(msgspec.Struct, kw_only=True):
    """A run's rates: its counts over the load's duration, per second."""

    offered_msgs_per_s: float
    sent_msgs_per_s: float
    acked_msgs_per_s: float
    deliveries_per_s: float


class Second(msgspec.Struct, kw_only=True):
    """One second of a run's timeline, every load worker's together; latencies of that second's deliveries."""

    t: int  # seconds since the load started, at the second's end
    sent: int
    acked: int
    delivered: int
    p50_ms: float  # NaN: no delivery that second
    p99_ms: float
    slow_p99_ms: float = NAN  # the slow-readers scenario's slow members (NaN: no delivery to them that second)


class SlowMember(msgspec.Struct, frozen=True, kw_only=True):
    """One slow reader of the slow-readers scenario, settled (bench/slowreport.py). NaN times: never."""

    member: int
    delivery_rate: float  # messages/s its rooms produce
    expected: int
    delivered: int
    unacked: int  # of the delivered, messages whose ack never reached their sender (not expected, not duplicates)
    lost: int  # expected, never delivered within the run and its drain: lost_in_gaps + lost_at_tail
    lost_in_gaps: int  # holes: later messages of the same stream did arrive (dropped)
    lost_at_tail: int  # a stream's last messages never came (still owed at the end, or cut off)
    duplicated: int
    out_of_order: int
    disconnects: int  # the server closed or reset its connection (it never reconnects)
    disconnected_at_s: float  # the first one the member noticed (its next read), seconds since the start
    catch_up_s: float  # from the end of the slow phase until all sent before it had arrived
    lagging_s: float  # time with deliveries more than 1 s late (while connected)
    max_latency_ms: float
    bytes_read: int


class SlowPhases(msgspec.Struct, kw_only=True):
    """The slow-readers scenario's aggregate: the slow members, the rest, and the server phase by phase."""

    slow_for_s: float = NAN
    read_fraction: float = NAN
    slow_members: int = 0
    other_members: int = 0
    slow_totals: dict[str, int] = {}  # expected, delivered, lost, duplicated, out_of_order, disconnects
    other_totals: dict[str, int] = {}  # the same for the members that read at full speed
    # The slow members' deliveries (delivery_latency_ms: the others')
    slow_latency_ms: Percentiles = msgspec.field(default_factory=Percentiles)
    rss_mb: dict[str, float] = {}  # start, max_slow, max_after, end
    commit_p99_ms: dict[str, float] = {}  # slow (the slow phase), after (the rest of the run), run
    # Seconds (since the start) in which our server counted slow-consumer disconnects, as /metrics said each second
    server_cut_off_at_s: list[float] = []
    verdict: str = ""


class Wire(msgspec.Struct, kw_only=True):
    """Bytes the websocket members received after their handshakes, per message delivered to them: the members
    that agreed on permessage-deflate apart from the rest (bench/inflate.py). Long-polling members are left out.
    A record written before issue 18 has none: every count 0, every rate NaN."""

    deflate_members: int = 0  # agreed on permessage-deflate
    plain_members: int = 0  # did not: never offered, or offered and declined
    declined: int = 0  # of the plain members, those that offered and got an answer without the extension
    deflate_bytes: int = 0  # received off the socket, before inflating
    plain_bytes: int = 0
    deflate_delivered: int = 0  # deliveries to those members (duplicates included)
    plain_delivered: int = 0
    inflated: int = 0  # compressed messages the deflate members inflated
    deflate_bytes_per_message: float = NAN  # deflate_bytes / deflate_delivered (NaN: no such member or delivery)
    plain_bytes_per_message: float = NAN
    # The checked deliveries' latency, each group's (delivery_latency_ms: both): compression's cost on the server's
    # side shows in both, the inflating in the first alone. When no member agreed, the plain one is every delivery's.
    deflate_latency_ms: Percentiles = msgspec.field(default_factory=Percentiles)
    plain_latency_ms: Percentiles = msgspec.field(default_factory=Percentiles)

    @classmethod
    def of(cls, members: list[tuple[bool, bool, int, int, int]]) -> Wire:
        """From (offered, negotiated, wire bytes, inflated, delivered) per member."""
        wire = cls()
        for offered, negotiated, received, inflated, delivered in members:
            if negotiated:
                wire.deflate_members += 1
                wire.deflate_bytes += received
                wire.deflate_delivered += delivered
                wire.inflated += inflated
            else:
                wire.plain_members += 1
                wire.declined += offered
                wire.plain_bytes += received
                wire.plain_delivered += delivered
        wire.deflate_bytes_per_message = _per(wire.deflate_bytes, wire.deflate_delivered)
        wire.plain_bytes_per_message = _per(wire.plain_bytes, wire.plain_delivered)
        return wire


def _per(total: int, count: int) -> float:
    return round(total / count, 1) if count else NAN


class Result(msgspec.Struct, kw_only=True):
    schema: int = SCHEMA
    scenario: str
    description: str
    parameters: dict[str, Any]
    server: dict[str, Any]
    git_commit: str
    machine: dict[str, Any]
    started_at: str
    counts: Counts
    throughput: Throughput
    delivery_latency_ms: Percentiles
    # A cluster (several target URLs): the deliveries of messages sent through another process than the member's
    # (NaN: a single process).
    cross_latency_ms: Percentiles = msgspec.field(default_factory=Percentiles)
    ack_latency_ms: Percentiles
    timeline: list[Second]
    server_resources: list[dict[str, float]]
    server_metrics: dict[str, float]
    client_cpu_percent: list[float]
    client_bound: bool
    errors: list[str] = []
    notes: list[str] = []
    churn: dict[str, float] = {}
    slow_members: list[SlowMember] = []
    slow_phases: SlowPhases = msgspec.field(default_factory=SlowPhases)
    wire: Wire = msgspec.field(default_factory=Wire)
    # The server's CPU seconds (user + system, from the load's start to the end of its drain) over the messages it
    # accepted, in µs. NaN: a server we did not start (no pid), or a record written before the field.
    server_cpu_us_per_message: float = NAN

    def save(self, directory: Path, stem: str) -> Path:
        return _write_json(directory / f"{stem}.json", self)


class _Record(msgspec.Struct, kw_only=True):
    """What every record of several runs says about itself: its schema, the command, the code and the machine."""

    schema: int = SCHEMA
    command: str = ""
    git_commit: str = ""
    machine: dict[str, Any] = {}
    started_at: str = ""

    def save(self, path: Path) -> Path:
        return _write_json(path, self)


class Step(msgspec.Struct, kw_only=True):
    """One step of a stress ramp: a complete run at one offered rate, and its verdict (bench/stress.py)."""

    rate: float  # offered msgs/s
    ok: bool  # sustainable: nothing lost or duplicated, the server kept up, p99 within the bound
    why: str  # "ok", "ok (client-bound)", "client-bound" or what failed
    acked_msgs_per_s: float
    deliveries_per_s: float
    p50_ms: float  # delivery latency
    p99_ms: float
    lost: int
    slow_consumer_disconnects: float  # our server's counter over the step (0 for the peers)
    server_cpu_percent: float  # the server's busiest second, % of one core
    client_cpu_percent: float  # the busiest load worker over the load, % of its core
    errors: int
    limit: str = ""  # whose limit (bench.stress.step_limit); "" in records written before the field
    # A cluster: the delivery latency of messages that crossed to another process (NaN: not a cluster). Records
    # written before these fields left them out for a single process.
    cross_p50_ms: float = NAN
    cross_p99_ms: float = NAN


class Ramp(msgspec.Struct, kw_only=True):
    """One target's stress ramp: its steps and the maximum sustainable rate they found (bench/stress.py).

    Fields added after the first records have defaults (NaN: unknown); ``lower_bound`` is required, and
    ``load_any`` infers it for the records written before it."""

    target: str
    server: dict[str, Any] = {}  # the target's settings (Target.description())
    factor: float = NAN  # the offered rate's factor from step to step
    step_s: float = NAN  # seconds of load per step
    shape: str  # the scenario whose rooms and senders the ramp scales
    p99_bound_ms: float
    steps: list[Step]
    max_sustainable_msgs_per_s: float  # acked, at the fastest step that passed (0: none passed)
    max_sustainable_deliveries_per_s: float
    p99_at_max_ms: float  # NaN: no step passed
    client_bound: bool  # the slowest failing step above the maximum failed on the load generator's core
    # The server never failed a step (client-bound, or out of steps): the maximum is at least what it found.
    lower_bound: bool
    limited_by: str  # "<rate> msg/s: <why>" of that failing step, or "stopped after N steps"
    # Offered msgs/s: the fastest step that passed and the slowest that failed above it ([] if either is
    # missing); the server's maximum lies between them. ``bisections``: the steps spent narrowing it.
    bracket: list[float] = []
    bisections: int = 0
    limit: str = ""  # whose limit ended the ramp (bench.stress.ramp_limit); "" in older records
    server_cpu_at_max: float = NAN  # the fastest passing step's, % of one core
    client_cpu_at_max: float = NAN


class StressRecord(_Record, kw_only=True):
    """The versioned result of stress ramps (``run stress``, ``peers --stress``): one ramp per target."""

    kind: str = "stress"
    ramps: list[Ramp] = []


class Repeats(_Record, kw_only=True):
    """``run --repeat N``: the same scenario run N times, each on a freshly started server, in one record.

    ``compare`` reads it as N runs of one side and decides on their medians and spread (bench/compare.py)."""

    kind: str = "repeats"
    runs: list[Result] = []


class IdleRun(msgspec.Struct, kw_only=True):
    """One fresh server's memory before and after idle websocket members connected (bench/idle.py)."""

    deflate_share: float  # of the members, offering permessage-deflate
    rooms: int  # rooms the members are in (0: none)
    asked: int  # members meant to connect
    connected: int
    offered: int  # members that offered permessage-deflate
    negotiated: int  # connected members the server agreed on it with
    connect_s: float  # seconds to connect them all
    settle_s: float  # seconds idle before the RSS was taken
    rss_before_mb: float  # users and rooms made, nobody connected
    rss_after_mb: float  # every member connected and idle
    rss_per_connection_kb: float  # (after - before) / connected
    descriptor_limit: int  # the load generator's RLIMIT_NOFILE (soft, after raising it)
    server: dict[str, Any] = {}
    errors: list[str] = []


class IdleRecord(_Record, kw_only=True):
    """``idle-connections``: a run per share of members offering permessage-deflate, each on a fresh server."""

    kind: str = "idle-connections"
    runs: list[IdleRun] = []


def _write_json(path: Path, record: msgspec.Struct) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(record), indent=2))
    return path


def load_any(path: Path) -> Result | StressRecord | Repeats | IdleRecord:
    """A run's result, a stress record (also the unversioned list of ramps that early runs wrote), a record of
    repeats or of idle connections. Raises OSError (unreadable), msgspec.DecodeError (not JSON),
    msgspec.ValidationError (not a record)."""
    raw = _read_json(path)
    if isinstance(raw, list):
        raw = {"kind": "stress", "ramps": raw}
    if isinstance(raw, dict) and raw.get("kind") == "stress":
        if isinstance(raw.get("ramps"), list):
            raw["ramps"] = [_with_lower_bound(r) for r in raw["ramps"]]
        return msgspec.convert(raw, type=StressRecord)
    if isinstance(raw, dict) and raw.get("kind") == "repeats":
        return msgspec.convert(raw, type=Repeats)
    if isinstance(raw, dict) and raw.get("kind") == "idle-connections":
        return msgspec.convert(raw, type=IdleRecord)
    return msgspec.convert(raw, type=Result)


def _with_lower_bound(ramp: Any) -> Any:
    """A ramp written before ``lower_bound``: its maximum is a lower bound when it was client-bound or ran out of
    steps (what its ``limited_by`` says). Anything but an object is left to the decoder to refuse."""
    if not isinstance(ramp, dict) or "lower_bound" in ramp:
        return ramp
    out_of_steps = str(ramp.get("limited_by", "")).startswith("stopped after")
    return ramp | {"lower_bound": bool(ramp.get("client_bound")) or out_of_steps}


def load(path: Path) -> Result:
    """JSON has no NaN: msgspec writes a missing value (an empty second's p99, say) as null; read it back as NaN."""
    return msgspec.convert(_read_json(path), type=Result)


def _read_json(path: Path) -> Any:
    return _null_to_nan(msgspec.json.decode(path.read_bytes()))


def _null_to_nan(value: Any) -> Any:
    if value is None:
        return float("nan")
    if isinstance(value, dict):
        return {k: _null_to_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_null_to_nan(v) for v in value]
    return value


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def reference_ms(repeats: int = 7) -> float:
    """CPU milliseconds this process takes for a fixed piece of work (integer arithmetic and SHA-256), the median of
    ``repeats``: how fast the machine runs instructions right now, whatever our code does. A host whose other
    tenants slow every core (shared caches, a busy hyperthread sibling, a lower clock) shows here, and in no
    process's share of the CPU."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        digest = b"x" * 1024
        for _ in range(3000):
            digest = hashlib.sha256(digest).digest() * 32
        times.append((time.process_time() - start) * 1000)
    return round(statistics.median(times), 2)


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = {}
    for name in ("trio", "msgspec", "hypercorn", "quart-trio", "python-socketio", "uvicorn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            libs[name] = metadata.version(name)
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
    }

"""The server under test: ours started fresh (temporary database, pinned to a core), a peer, or a running URL."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from server.config import OPTIONS
from storage.open import redact, sqlite_path

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class TargetError(RuntimeError):
    pass


def check_loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise TargetError(f"{url}: the benchmark only targets loopback addresses")
    return host, parts.port or 80


class Target:
    """A server to benchmark. ``pid`` is None for a server we did not start (then no CPU/RSS samples)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        pid: int | None,
        settings: dict[str, object],
        proc: subprocess.Popen[bytes] | None = None,
        workdir: str | None = None,
        persists: bool = True,
    ) -> None:
        self.name = name
        self.url = url
        self.pid = pid
        self.settings = settings
        self.persists = persists
        self._proc = proc
        self._workdir = workdir
        self.more_urls: list[str] = []  # other processes of a cluster: load workers spread over all of them

    def description(self) -> dict[str, object]:
        """What a result records about the server: its name, URL, settings and whether it persists."""
        more = {"more_urls": self.more_urls} if self.more_urls else {}
        return {"name": self.name, "url": self.url, **self.settings, **more, "persists": self.persists}

    @property
    def host_port(self) -> tuple[str, int]:
        return check_loopback(self.url)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)


def server_cores() -> tuple[list[int], list[int]]:
    """(cores for the server, cores for the clients): the first core for the server, the rest for load."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < 2:
        return cores, cores
    return cores[:1], cores[1:]


def pin_prefix(cores: list[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores))] if shutil.which("taskset") else []


def pinned_cores(cores: list[int]) -> list[int] | None:
    """What a result records as the server's cores: None when there is no taskset to pin with."""
    return cores if pin_prefix(cores) else None


def start_ours(
    mode: str, *, extra_args: list[str] | None = None, database: str | None = None, ws_compression: str | None = None
) -> Target:
    """``python -m server`` on a free port, pinned with taskset; on ``database``, or a fresh temporary SQLite
    file when None. ``ws_compression`` ("on" or "off"): the flag, and the setting in the target's name (so that
    runs of both settings side by side in one report have a column each); None: the server's default."""
    workdir = tempfile.mkdtemp(prefix="minitalk-bench-")
    if database is not None:
        check_loopback_database(database)
    cores, _ = server_cores()
    args = [
        sys.executable,
        "-m",
        "server",
        "--port",
        "0",
        "--database",
        database or f"sqlite:///{workdir}/bench.db",
        "--delivery-mode",
        mode,
        "--log-level",
        "info",
        # Setup hashes thousands of passwords through signup-batch; that is not what is measured.
        "--bcrypt-batch-rounds",
        "4",
        # The per-connection send limit would cap a stress ramp's publisher: the bench measures the server.
        "--message-rate",
        "0",
        *(["--ws-compression", ws_compression] if ws_compression else []),
        *(extra_args or []),
    ]
    log = open(Path(workdir) / "server.log", "wb")  # noqa: SIM115 -- lives as long as the server
    proc = subprocess.Popen([*pin_prefix(cores), *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    port = _wait_for_port(Path(workdir) / "server.log", proc)
    settings: dict[str, object] = {
        "delivery_mode": mode,
        "database": redact(database) if database else "sqlite (temporary file)",
        "pinned_cores": pinned_cores(cores),
        "args": args[3:],
        "environment": server_environment(args, os.environ),
    }
    return Target(
        f"minitalk-trio ({mode}{f', ws-compression {ws_compression}' if ws_compression else ''})",
        f"http://127.0.0.1:{port}",
        pid=proc.pid,
        settings=settings,
        proc=proc,
        workdir=workdir,
    )


SECRETS = {"JWT_SECRET", "ADMIN_TOKEN"}


def server_environment(args: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The server's settings that come from the environment it inherits (no flag in ``args`` overrides them), so a
    result says when a run was made with, say, ``BATCH_LINGER=0.05``. Secrets are recorded as set, not shown."""
    found = {}
    for opt in OPTIONS:
        if opt.env is not None and opt.env in environ and opt.flag not in args:
            found[opt.env] = "***" if opt.env in SECRETS else environ[opt.env]
    return found


def _wait_for_port(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if match := _LISTENING.search(text):
            return int(match.group(1))
        if proc.poll() is not None:
            raise TargetError(f"server exited before listening:\n{text[-2000:]}")
        time.sleep(0.05)
    raise TargetError("server did not start listening within 30 s")


def check_loopback_database(url: str) -> None:
    """Benchmarks talk to loopback only: a database URL naming another host is refused."""
    if sqlite_path(url) is not None:
        return
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise TargetError(f"benchmark databases must be on loopback, not {host!r}")


def external(url: str, pid: int | None = None, more_urls: list[str] | None = None) -> Target:
    """A running server; ``more_urls``: the other processes of its cluster (setup goes through ``url``)."""
    for each in [url, *(more_urls or [])]:
        check_loopback(each)
        httpx.get(each.rstrip("/") + "/health", timeout=5).raise_for_status()
    target = Target(f"server at {url}", url, pid=pid, settings={"external": True})
    target.more_urls = list(more_urls or [])
    return target


# Our /metrics histograms whose mean the reports print: (name in results, histogram, scale to the unit).
HISTOGRAM_MEANS = (
    ("loop_lag_ms", "minitalk_event_loop_lag_seconds", 1000.0),
    ("batch_size", "minitalk_batch_size_messages", 1.0),
    ("commit_ms", "minitalk_commit_seconds", 1000.0),
)


def histogram_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Each histogram's mean over the observations made between two scrapes (none observed: left out)."""
    out = {}
    for name, key, scale in HISTOGRAM_MEANS:
        count = after.get(f"{key}_count", 0.0) - before.get(f"{key}_count", 0.0)
        if count > 0:
            out[name] = round((after.get(f"{key}_sum", 0.0) - before.get(f"{key}_sum", 0.0)) / count * scale, 3)
    return out


COMMIT = "minitalk_commit_seconds"


def histogram_quantile(q: float, before: dict[str, float], after: dict[str, float], key: str = COMMIT) -> float:
    """The q-quantile (0-1) of a /metrics histogram over the observations between two scrapes, in the unit of its
    buckets, interpolated linearly inside the bucket that holds it as Prometheus's ``histogram_quantile`` does.
    NaN when nothing was observed; the largest finite bound when the quantile falls in the +Inf bucket."""
    prefix = f'{key}_bucket{{le="'
    bounds = {name: float(name[len(prefix) : -2]) for name in after if name.startswith(prefix)}
    buckets = sorted((bound, after[name] - before.get(name, 0.0)) for name, bound in bounds.items())
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


class Sampler:
    """Server CPU % and RSS once a second (psutil), the whole machine's CPU % (100% = one core) and, when the
    server has our /metrics, its internals that second: outbox bytes and ingest queue depth (gauges at the scrape),
    and from the histograms' deltas the mean event-loop lag, batch size and commit time over the second."""

    # A per-second scrape must not stall the sampling loop when the server is saturated: skip that second.
    SECOND_SCRAPE_TIMEOUT_S = 0.3

    def __init__(self, target: Target) -> None:
        self._target = target
        self._process = psutil.Process(target.pid) if target.pid else None
        if self._process is not None:
            self._process.cpu_percent(None)
        psutil.cpu_percent(None)  # the machine's, from here on: what others run beside us shows in compare
        self._cores = psutil.cpu_count() or 1
        self.samples: list[dict[str, float]] = []
        self.metrics_text = ""
        self._http = httpx.Client(base_url=target.url)
        self._has_metrics = True  # until a scrape says otherwise (the peers have no /metrics)
        self._last: dict[str, float] = {}
        # (t, the commit histogram's cumulative series) each second: quantiles over any span (a scenario's phases)
        self.commit_snapshots: list[tuple[float, dict[str, float]]] = []

    def close(self) -> None:
        self._http.close()

    def sample(self, t: float) -> None:
        if self._process is None:
            return
        try:
            with self._process.oneshot():
                cpu = self._process.cpu_percent(None)
                rss = self._process.memory_info().rss / 2**20
                times = self._process.cpu_times()
        except psutil.Error:
            return
        machine = psutil.cpu_percent(None) * self._cores  # every process on every core, 100% = one core
        sample = {"t": round(t, 2), "cpu_percent": cpu, "rss_mb": round(rss, 1), "machine_cpu_percent": machine}
        sample["cpu_s"] = round(times.user + times.system, 3)  # cumulative: CPU per message over any span
        if self._has_metrics:
            sample |= self._internals(t)
        self.samples.append(sample)

    def _internals(self, t: float) -> dict[str, float]:
        now = self._get(self.SECOND_SCRAPE_TIMEOUT_S)
        if not now:
            return {}
        before, self._last = self._last, now
        self.commit_snapshots.append((t, {k: v for k, v in now.items() if k.startswith(COMMIT)}))
        out = {
            "outbox_mb": round(now.get("minitalk_outbox_bytes", 0.0) / 2**20, 3),
            "ingest_queue": now.get("minitalk_ingest_queue_messages", 0.0),
            "slow_consumer_disconnects": now.get("minitalk_slow_consumer_disconnects_total", 0.0),
        }
        if not before:
            return out
        p99 = histogram_quantile(0.99, before, now)
        return out | histogram_means(before, now) | ({} if math.isnan(p99) else {"commit_p99_ms": round(p99 * 1000, 3)})

    def scrape(self) -> dict[str, float]:
        values = self._get(5.0)
        self._has_metrics = bool(values)
        self._last = values
        return values

    def _get(self, timeout: float) -> dict[str, float]:
        try:
            r = self._http.get("/metrics", timeout=timeout)
        except httpx.HTTPError:
            return {}
        if r.status_code != 200:
            return {}
        self.metrics_text = r.text
        values: dict[str, float] = {}
        for line in r.text.splitlines():
            if line.startswith("minitalk_") and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

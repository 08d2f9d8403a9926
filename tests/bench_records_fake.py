"""Made-up bench records for the tests of the instrument's reports and verdicts."""

from __future__ import annotations

from typing import Any

import msgspec

from bench.result import Counts, Result, Step, Throughput


def fake_step(rate: float = 1000.0, *, ok: bool, why: str, server_cpu: float = 40.0, client_cpu: float = 60.0) -> Step:
    """One ramp step at ``rate`` msg/s in rooms of six: p50 5 ms, p99 10 ms, nothing lost."""
    return Step(
        rate=rate,
        ok=ok,
        why=why,
        acked_msgs_per_s=rate,
        deliveries_per_s=rate * 6,
        p50_ms=5.0,
        p99_ms=10.0,
        lost=0,
        slow_consumer_disconnects=0.0,
        server_cpu_percent=server_cpu,
        client_cpu_percent=client_cpu,
        errors=0,
    )


def fake_result(name: str, **fields: Any) -> Result:
    """A run of the quick scenario against server ``name``, every count and rate 0; ``fields`` replace any part."""
    data: dict[str, Any] = {
        "scenario": "quick",
        "description": "",
        "parameters": {},
        "server": {"name": name},
        "git_commit": "",
        "machine": {},
        "started_at": "",
        "counts": dict.fromkeys((f.name for f in msgspec.structs.fields(Counts)), 0),
        "throughput": dict.fromkeys((f.name for f in msgspec.structs.fields(Throughput)), 0.0),
        "delivery_latency_ms": {},
        "ack_latency_ms": {},
        "timeline": [],
        "server_resources": [],
        "server_metrics": {},
        "client_cpu_percent": [],
        "client_bound": False,
    }
    return msgspec.convert(data | fields, type=Result)

"""Made-up bench records for the tests of the instrument's reports and verdicts."""

from __future__ import annotations

from bench.result import Step


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

"""The stress ramp: raise the offered rate step by step until delivery p99 passes a bound or anything is lost.

Each step is a complete run on the same server (fresh users, same room layout). The maximum sustainable rate is
the last step where nothing was lost or duplicated, the server kept up (acked ≥ 97% of offered), and delivery
p99 stayed within the bound. A client-bound step ends the ramp too: past it the numbers would describe the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from bench import runner
from bench.result import Result
from bench.scenarios import Scenario, Send, preset
from bench.target import Target

KEEP_UP = 0.97  # acked/offered below this: the server (or the client) is falling behind the schedule


def stress_scenario(rate: float, duration: float) -> Scenario:
    """The quick preset's rooms and members (about 6.3 members per room), offered ``rate`` msg/s."""
    base = preset("quick", duration)
    per_pair = rate / len(base.sends)
    return msgspec.structs.replace(
        base,
        name="stress",
        sends=[Send(s.user, s.room, per_pair) for s in base.sends],
        arithmetic="",
        description=f"the quick preset's 10 rooms and 30 users at {rate:,.0f} msg/s",
    )


def sustainable(result: Result, p99_bound_ms: float) -> tuple[bool, str]:
    counts, p99 = result.counts, result.delivery_latency_ms["p99"]
    if counts["lost"] or counts["duplicated"]:
        return False, f"{counts['lost']} lost, {counts['duplicated']} duplicated"
    if result.throughput["acked_msgs_per_s"] < KEEP_UP * result.throughput["offered_msgs_per_s"]:
        return False, "fell behind the offered rate"
    if not p99 <= p99_bound_ms:
        return False, f"p99 {p99:,.0f} ms > {p99_bound_ms:g} ms"
    if result.client_bound:
        return False, "client-bound"
    return True, "ok"


def ramp(
    target: Target,
    *,
    start: float = 1000,
    factor: float = 1.5,
    step_s: float = 8,
    p99_bound_ms: float = 100,
    max_steps: int = 10,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    best: Result | None = None
    rate = start
    for _ in range(max_steps):
        result = runner.run(stress_scenario(rate, step_s), target)
        ok, why = sustainable(result, p99_bound_ms)
        step = {
            "rate": round(rate),
            "ok": ok,
            "why": why,
            "acked_msgs_per_s": result.throughput["acked_msgs_per_s"],
            "deliveries_per_s": result.throughput["deliveries_per_s"],
            "p50_ms": result.delivery_latency_ms["p50"],
            "p99_ms": result.delivery_latency_ms["p99"],
            "lost": result.counts["lost"],
            "server_cpu_percent": max((s["cpu_percent"] for s in result.server_resources), default=0.0),
            "client_cpu_percent": max(result.client_cpu_percent, default=0.0),
        }
        steps.append(step)
        if on_step:
            on_step(step)
        if not ok:
            break
        best = result
        rate *= factor
    return {
        "target": target.name,
        "p99_bound_ms": p99_bound_ms,
        "steps": steps,
        "max_sustainable_msgs_per_s": best.throughput["acked_msgs_per_s"] if best else 0.0,
        "max_sustainable_deliveries_per_s": best.throughput["deliveries_per_s"] if best else 0.0,
        "p99_at_max_ms": best.delivery_latency_ms["p99"] if best else float("nan"),
        "limited_by": steps[-1]["why"] if steps and not steps[-1]["ok"] else f"stopped after {max_steps} steps",
    }

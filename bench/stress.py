"""The stress ramp: raise the offered rate step by step until delivery p99 passes a bound or anything is lost.

The ramp keeps a scenario's shape (the quick preset's 10 small rooms stress ingest; the 1000-member fan-out
stresses delivery) and scales its rate. Each step is a complete run on the same server (fresh users, same
room layout). The maximum sustainable rate is
the last step where nothing was lost or duplicated, the server kept up (acked ≥ 97% of offered), and delivery
p99 stayed within the bound. A client-bound step (the load generator saturated its core) that passes anyway
counts; one that fails ends the ramp with the verdict "client-bound", and the maximum is then a lower bound
of the server's, as it is when the ramp runs out of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from bench import runner
from bench.result import Result
from bench.scenarios import Scenario, Send
from bench.target import Target

KEEP_UP = 0.97  # acked/offered below this: the server (or the client) is falling behind the schedule
# The first step asks for this many deliveries/s: low enough that every peer passes it, so a ramp never ends at
# step one by starting too high; x1.5 per step reaches a million deliveries/s in 13 steps.
START_DELIVERIES_PER_S = 5000.0
# Seconds of load per step (``--duration`` sets it): long enough for a p99 of a few thousand deliveries.
STEP_S = 8.0
# x1.5 per step: 20 steps reach 2,200 times the first rate (11 million deliveries/s in fan-out), past what one
# client core can ask for; a ramp that runs out of steps reports its maximum as a lower bound.
MAX_STEPS = 20
# If even the first step fails, step down this many times (to ~9% of it) looking for a rate that passes.
MAX_STEPS_DOWN = 6
# The verdict of a step whose load generator saturated its core: the ramp ends there, and the maximum it
# found is a lower bound of the server's (the server was not what failed).
CLIENT_BOUND = "client-bound"
# ... unless the server's core was as busy as the client's (max of its per-second samples, % of one core):
# then either could have failed the step, and the ramp must not call the maximum a lower bound.
SERVER_SATURATED_PERCENT = 90.0


def scaled(base: Scenario, rate: float, duration: float) -> Scenario:
    """``base``'s rooms, members and senders (their shares of the load kept), offered ``rate`` msg/s in all."""
    factor = rate / base.offered_rate
    fanout = base.expected_deliveries_per_s / base.offered_rate
    return msgspec.structs.replace(
        base,
        name="stress",
        duration=duration,
        sends=[Send(s.user, s.room, s.rate * factor) for s in base.sends],
        arithmetic="",
        description=f"{base.name}'s rooms and members at {rate:,.0f} msg/s ({rate * fanout:,.0f} deliveries/s)",
    )


def first_rate(base: Scenario, deliveries_per_s: float = START_DELIVERIES_PER_S) -> float:
    """The ramp's first step: the rate that asks for ``deliveries_per_s``, whatever the room sizes."""
    return deliveries_per_s * base.offered_rate / base.expected_deliveries_per_s


def sustainable(result: Result, p99_bound_ms: float) -> tuple[bool, str]:
    counts, p99 = result.counts, result.delivery_latency_ms["p99"]
    if counts["lost"] or counts["duplicated"]:
        return False, f"{counts['lost']} lost, {counts['duplicated']} duplicated"
    why = ""
    if counts["acked"] < KEEP_UP * counts["offered"]:  # counts: at low rates the schedule floors per stream
        why = "fell behind the offered rate"
    elif not p99 <= p99_bound_ms:
        why = f"p99 {p99:,.0f} ms > {p99_bound_ms:g} ms"
    if result.client_bound:
        # A saturated client only adds latency: a step that passes anyway passed; one that fails may have
        # failed on the client, so the ramp ends there without blaming the server, unless it was saturated too.
        if not why:
            return True, "ok (client-bound)"
        if _server_cpu(result) < SERVER_SATURATED_PERCENT:
            return False, CLIENT_BOUND
        return False, f"{why} (server and client saturated)"
    return (False, why) if why else (True, "ok")


def _server_cpu(result: Result) -> float:
    return max((s["cpu_percent"] for s in result.server_resources), default=0.0)


def ramp(
    target: Target,
    base: Scenario,
    *,
    start: float | None = None,
    factor: float = 1.5,
    step_s: float = STEP_S,
    p99_bound_ms: float = 100,
    max_steps: int = MAX_STEPS,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    best: Result | None = None
    failed: dict[str, Any] | None = None  # the lowest failing step above the best one
    rate = start or first_rate(base)
    descending = False
    for _ in range(max_steps):
        result = runner.run(scaled(base, rate, step_s), target)
        ok, why = sustainable(result, p99_bound_ms)
        step = {
            "rate": round(rate, 2),
            "ok": ok,
            "why": why,
            "acked_msgs_per_s": result.throughput["acked_msgs_per_s"],
            "deliveries_per_s": result.throughput["deliveries_per_s"],
            "p50_ms": result.delivery_latency_ms["p50"],
            "p99_ms": result.delivery_latency_ms["p99"],
            "lost": result.counts["lost"],
            "slow_consumer_disconnects": result.server_metrics.get("slow_consumer_disconnects_total", 0.0),
            "server_cpu_percent": _server_cpu(result),
            "client_cpu_percent": max(result.client_cpu_percent, default=0.0),
            "errors": len(result.errors),
        }
        if result.cross_latency_ms:  # a cluster: messages that crossed to another process
            step["cross_p50_ms"] = result.cross_latency_ms["p50"]
            step["cross_p99_ms"] = result.cross_latency_ms["p99"]
        steps.append(step)
        if on_step:
            on_step(step)
        if ok:
            best = result
            if descending:  # the step above failed already
                break
            rate *= factor
            continue
        failed = step
        if best is not None or len(steps) > MAX_STEPS_DOWN:
            break
        descending = True  # the first step was already too much: look below it
        rate /= factor
    return {
        "target": target.name,
        "server": target.description(),
        "factor": factor,
        "step_s": step_s,
        "shape": base.name,
        "p99_bound_ms": p99_bound_ms,
        "steps": steps,
        "max_sustainable_msgs_per_s": best.throughput["acked_msgs_per_s"] if best else 0.0,
        "max_sustainable_deliveries_per_s": best.throughput["deliveries_per_s"] if best else 0.0,
        "p99_at_max_ms": best.delivery_latency_ms["p99"] if best else float("nan"),
        "client_bound": failed is not None and failed["why"] == CLIENT_BOUND,
        # The server never failed a step: the maximum is at least what it found (a "≥" in tables and ratios).
        "lower_bound": failed is None or failed["why"] == CLIENT_BOUND,
        "limited_by": (
            f"{failed['rate']:,.0f} msg/s: {failed['why']}"
            if failed is not None
            else f"stopped after {max_steps} steps"
        ),
    }


def lower_bound(ramp: dict[str, Any]) -> bool:
    """Whether a ramp's maximum is only a lower bound of the server's (records before the field: inferred)."""
    if "lower_bound" in ramp:
        return bool(ramp["lower_bound"])
    return bool(ramp.get("client_bound")) or str(ramp.get("limited_by", "")).startswith("stopped after")

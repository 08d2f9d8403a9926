"""The stress ramp: raise the offered rate step by step until delivery p99 passes a bound or anything is lost.

The ramp keeps a scenario's shape (the quick preset's 10 small rooms stress ingest; the 1000-member fan-out
stresses delivery) and scales its rate. Each step is a complete run on the same server (fresh users, same
room layout). A step is sustainable when nothing was lost or duplicated, the server kept up (acked ≥ 97% of
offered), and delivery p99 stayed within the bound. The rate climbs x1.5 a step until one fails; then the ramp
bisects (geometric middle) between the fastest passing and the slowest failing rate until they are within 10%
(``narrow_to``; 3 steps from a x1.5 bracket, at most ``MAX_BISECTIONS``), and reports that bracket. The maximum
sustainable rate is the fastest step that passed. A client-bound step (the load generator saturated its core)
that passes anyway counts; one that fails is the client's limit, and when the slowest failing step above the
maximum is the client's, the maximum is a lower bound of the server's, as it is when the ramp runs out of steps.
Each step and the ramp say whose limit it was (``step_limit``, ``ramp_limit``) and the CPU of both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from bench import runner
from bench.result import Ramp, Result, Step
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
# After the first failing step, bisect between the fastest passing and the slowest failing rate until they are
# within 10% of each other: from a x1.5 bracket that takes 3 steps (x1.22, x1.11, x1.05). At most this many.
NARROW_TO = 0.10
MAX_BISECTIONS = 6


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
    counts, p99 = result.counts, result.delivery_latency_ms.p99
    if counts.lost or counts.duplicated:
        return False, f"{counts.lost} lost, {counts.duplicated} duplicated"
    why = ""
    if counts.acked < KEEP_UP * counts.offered:  # counts: at low rates the schedule floors per stream
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
    narrow_to: float = NARROW_TO,
    on_step: Callable[[Step], None] | None = None,
) -> Ramp:
    """Climb by ``factor`` until a step fails (or step down from a first one that fails), then bisect between the
    fastest passing and the slowest failing rate until they are within ``narrow_to`` of each other (0: do not)."""
    steps: list[Step] = []
    passed: dict[float, Result] = {}  # offered rate → the result of a step that passed

    def step_at(rate: float) -> bool:
        result = runner.run(scaled(base, rate, step_s), target)
        step = _step(result, rate, p99_bound_ms)
        steps.append(step)
        if on_step:
            on_step(step)
        if step.ok:
            passed[rate] = result
        return step.ok

    rate = start or first_rate(base)
    lo = hi = 0.0  # the fastest rate that passed, the slowest that failed above it (0: none yet)
    descending = False
    for _ in range(max_steps):
        if step_at(rate):
            lo = rate
            if descending:  # the step above failed already
                break
            rate *= factor
            continue
        hi = rate
        if lo or len(steps) > MAX_STEPS_DOWN:
            break
        descending = True  # the first step was already too much: look below it
        rate /= factor
    bisections = 0
    while narrow_to > 0 and lo and hi and hi / lo > 1 + narrow_to and bisections < MAX_BISECTIONS:
        mid = math.sqrt(lo * hi)  # the geometric middle: the ramp's steps are ratios
        bisections += 1
        if step_at(mid):
            lo = mid
        else:
            hi = mid
    best = passed.get(lo)
    failed = next((s for s in reversed(steps) if not s.ok and s.rate == round(hi, 2)), None) if hi else None
    out = Ramp(
        target=target.name,
        server=target.description(),
        factor=factor,
        step_s=step_s,
        shape=base.name,
        p99_bound_ms=p99_bound_ms,
        steps=steps,
        max_sustainable_msgs_per_s=best.throughput.acked_msgs_per_s if best else 0.0,
        max_sustainable_deliveries_per_s=best.throughput.deliveries_per_s if best else 0.0,
        p99_at_max_ms=best.delivery_latency_ms.p99 if best else float("nan"),
        client_bound=failed is not None and failed.why == CLIENT_BOUND,
        # The server never failed a step: the maximum is at least what it found (a "≥" in tables and ratios).
        lower_bound=failed is None or failed.why == CLIENT_BOUND,
        limited_by=(
            f"{failed.rate:,.0f} msg/s: {failed.why}" if failed is not None else f"stopped after {max_steps} steps"
        ),
        bracket=[round(lo, 2), round(hi, 2)] if lo and hi else [],
        bisections=bisections,
    )
    best_step = at_max(out)
    out.limit = ramp_limit(out)
    out.server_cpu_at_max = best_step.server_cpu_percent if best_step else float("nan")
    out.client_cpu_at_max = best_step.client_cpu_percent if best_step else float("nan")
    return out


def _step(result: Result, rate: float, p99_bound_ms: float) -> Step:
    """The record of one step: what it offered, what came back, the verdict and whose limit it was."""
    ok, why = sustainable(result, p99_bound_ms)
    step = Step(
        rate=round(rate, 2),
        ok=ok,
        why=why,
        acked_msgs_per_s=result.throughput.acked_msgs_per_s,
        deliveries_per_s=result.throughput.deliveries_per_s,
        p50_ms=result.delivery_latency_ms.p50,
        p99_ms=result.delivery_latency_ms.p99,
        lost=result.counts.lost,
        slow_consumer_disconnects=result.server_metrics.get("slow_consumer_disconnects_total", 0.0),
        server_cpu_percent=_server_cpu(result),
        client_cpu_percent=max(result.client_cpu_percent, default=0.0),
        errors=len(result.errors),
        cross_p50_ms=result.cross_latency_ms.p50,  # a cluster: messages that crossed to another process
        cross_p99_ms=result.cross_latency_ms.p99,
    )
    step.limit = step_limit(step)
    return step


def bracket(ramp: Ramp) -> str:
    """The offered rates the maximum lies between, "lo to hi msg/s (+x%)", from the steps (older records too)."""
    best = at_max(ramp)
    if best is None:
        return "below every step"
    above = [s.rate for s in ramp.steps if not s.ok and s.rate > best.rate]
    if not above:
        return f"≥ {best.rate:,.0f} msg/s (no step above failed)"
    hi = min(above)
    return f"{best.rate:,.0f} to {hi:,.0f} msg/s (+{hi / best.rate - 1:.0%})"


def step_limit(step: Step) -> str:
    """Whose limit a step reached: "none" (it passed; "none (client saturated)" if the client was at its core
    anyway), "client" (the verdict client-bound), "server and client" (both saturated) or "server"."""
    if step.ok:
        return "none (client saturated)" if step.why.endswith("(client-bound)") else "none"
    if step.why == CLIENT_BOUND:
        return "client"
    if step.why.endswith("(server and client saturated)"):
        return "server and client"
    return "server"


def at_max(ramp: Ramp) -> Step | None:
    """The step the ramp's maximum comes from: the fastest that passed (None if none did)."""
    passed = [s for s in ramp.steps if s.ok]
    return max(passed, key=lambda s: s.rate) if passed else None


def ramp_limit(ramp: Ramp) -> str:
    """Whose limit ended the ramp: that of the slowest failing step above its maximum (older records too), or
    "none (out of steps)" when no step above it failed."""
    best = at_max(ramp)
    floor = best.rate if best else 0.0
    above = [s for s in ramp.steps if not s.ok and s.rate > floor]
    if not above:
        return "none (out of steps)" if best else "server"
    return step_limit(min(above, key=lambda s: s.rate))


def cpu_at_max(ramp: Ramp) -> str:
    """The server's and the client's CPU % (of one core) at the maximum, "server / client"; n/a without one."""
    best = at_max(ramp)
    if best is None:
        return "n/a"
    return f"{best.server_cpu_percent:,.0f} / {best.client_cpu_percent:,.0f}"

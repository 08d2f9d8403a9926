"""A cycle-collector probe for a server under a benchmark: every collection's pause, summed up at exit.

Loaded by putting this directory first on the server's ``PYTHONPATH`` (Python imports ``sitecustomize`` at
start); ``GC_PROBE_OUT`` names the summary file (default ``/tmp/gc-summary.txt``), written when the process
exits (a graceful stop: SIGINT or SIGTERM). Not imported by the server itself.

    PYTHONPATH=tools/gc_probe taskset -c 0 python -m server --port 4801 --message-rate 0 &
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from typing import Any

_started: list[float] = []
_pauses: list[tuple[int, float]] = []


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        _pauses.append((int(info["generation"]), time.perf_counter() - _started.pop()))


@atexit.register
def _summary() -> None:
    by_generation: dict[int, list[float]] = {}
    for generation, seconds in _pauses:
        by_generation.setdefault(generation, []).append(seconds)
    with open(os.environ.get("GC_PROBE_OUT", "/tmp/gc-summary.txt"), "w") as out:
        for generation, pauses in sorted(by_generation.items()):
            pauses.sort()
            out.write(
                f"gen{generation}: n={len(pauses)} total={sum(pauses) * 1000:.1f}ms max={pauses[-1] * 1000:.1f}ms"
                f" p99={pauses[int(len(pauses) * 0.99)] * 1000:.2f}ms\n"
            )


gc.callbacks.append(_on_gc)

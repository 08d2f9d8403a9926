"""``make autobahn``: start the echo harness, run Autobahn|Testsuite's fuzzingclient at it, summarise.

Steps: the echo server (``tools/autobahn/echo_server.py``) starts on a free loopback port; the committed
spec (``fuzzingclient.json``) is copied into ``reports/`` with that port; ``wstest -m fuzzingclient`` (Python
2.7, its own virtualenv) runs every case; the harness is stopped; ``reports/servers/index.json`` is counted
by behaviour. Exit status 1 if any case FAILED (or wstest itself failed), else 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPORTS = HERE / "reports"
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def summarise(index: dict[str, dict[str, dict[str, Any]]]) -> tuple[collections.Counter[str], list[str]]:
    """Counts per behaviour, and one line per case that is not plainly OK."""
    counts: collections.Counter[str] = collections.Counter()
    notable = []
    for agent, cases in index.items():
        for case in sorted(cases, key=case_key):
            result = cases[case]
            behaviour = result["behavior"]
            counts[behaviour] += 1
            close = result.get("behaviorClose", "")
            if behaviour != "OK" or close not in ("OK", "INFORMATIONAL"):
                notable.append(f"{agent} {case}: {behaviour} (close: {close})")
    return counts, notable


def report(index_path: Path) -> bool:
    """Print the summary; whether every case passed (none FAILED)."""
    counts, notable = summarise(json.loads(index_path.read_text()))
    total = sum(counts.values())
    print(f"autobahn: {total} cases: " + ", ".join(f"{counts[b]} {b}" for b in BEHAVIOURS))
    for line in notable:
        print("  " + line)
    return total > 0 and counts["FAILED"] == 0


def run(wstest: str) -> bool:
    wstest = str(Path(wstest).resolve())  # wstest runs in reports/, where its relative paths land
    REPORTS.mkdir(exist_ok=True)
    echo = subprocess.Popen(
        [sys.executable, "-m", "tools.autobahn.echo_server", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())  # the harness prints its port once it listens
        spec = json.loads((HERE / "fuzzingclient.json").read_text())
        spec["servers"][0]["url"] = f"ws://127.0.0.1:{port}"
        spec["outdir"] = str(REPORTS / "servers")
        spec_path = REPORTS / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        print(f"autobahn: echo harness on 127.0.0.1:{port}; running {wstest} -m fuzzingclient", flush=True)
        done = subprocess.run([wstest, "-m", "fuzzingclient", "-s", str(spec_path)], cwd=REPORTS, check=False)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    if done.returncode != 0:
        print(f"autobahn: wstest exited with {done.returncode}")
        return False
    return report(REPORTS / "servers" / "index.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--wstest", default=".autobahn-venv/bin/wstest", help="the wstest executable (Python 2.7)")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the last run's reports")
    args = parser.parse_args()
    ok = report(REPORTS / "servers" / "index.json") if args.summary_only else run(args.wstest)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""The alert rules in ``deploy/prometheus/``: valid for promtool, unit-tested, and complete.

``promtool check rules`` validates the rule file (PromQL syntax, templates); ``promtool test rules`` runs
``alerts_test.yml``, a firing and a quiet case for every alert. A few deliberately broken copies of the rules
must fail those unit tests, so they are known to look at what matters. promtool comes from Debian's
``prometheus`` package (``tools/prometheus.py``): installed when missing and root, else the tests are skipped,
or fail when ``CI`` is set (``tests/pg_fixtures.installed_or_skip``). The real Prometheus that scrapes a running
server is in ``tests/test_prometheus_scrape.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.pg_fixtures import installed_or_skip
from tests.server_process import ROOT
from tools.prometheus import PrometheusUnavailable, ensure_prometheus

RULES_DIR = ROOT / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> Path:
    return installed_or_skip(ensure_prometheus, PrometheusUnavailable)[1]


def run_promtool(*args: str | Path, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    # promtool reports failures on stderr and successes on stdout: one text for the assertion messages.
    return subprocess.run(
        [promtool(), *args],
        check=False,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )


def alert_blocks() -> dict[str, str]:
    """Each alert's name and its block of ``alerts.yml`` (the lines up to the next rule or group)."""
    text = ALERTS.read_text()
    starts = list(re.finditer(r"^ +- alert: (\w+)$", text, re.MULTILINE))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    return {m.group(1): text[m.start() : end] for m, end in zip(starts, ends, strict=True)}


def test_promtool_checks_the_rule_file() -> None:
    done = run_promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout
    assert f"SUCCESS: {len(alert_blocks())} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", ALERTS_TEST)
    assert done.returncode == 0, done.stdout
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_has_a_for_a_severity_its_text_and_unit_tests_that_fire_it() -> None:
    blocks = alert_blocks()
    assert len(blocks) >= 17, sorted(blocks)
    tests = ALERTS_TEST.read_text()
    for name, block in blocks.items():
        assert re.search(r"^ +for: \d+[mh]$", block, re.MULTILINE), f"{name}: no for:"
        severity = re.search(r"^ +severity: (\w+)$", block, re.MULTILINE)
        assert severity is not None and severity.group(1) in SEVERITIES, f"{name}: severity"
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^ +{annotation}: ", block, re.MULTILINE), f"{name}: no {annotation}"
        if name != "MinitalkTargetMissing":  # absent() has no value worth giving: it is 1
            assert "$value" in block, f"{name}: the text should give the value"
        # A firing case: the alert's name followed (before the next alertname) by expected labels.
        assert re.search(rf"alertname: {name}\n(?:(?!alertname:).)*?exp_labels:", tests, re.DOTALL), (
            f"{name}: no unit test where it fires"
        )
        assert f"docs/operating-alerts.md#{name.lower()}" in block, f"{name}: runbook anchor"
    documented = (ROOT / "docs" / "operating-alerts.md").read_text()
    missing = [name for name in blocks if f"### {name}" not in documented]
    assert not missing, f"not described in docs/operating-alerts.md: {missing}"


# Broken copies of the rules the unit tests must reject: each mutation undoes one deliberate detail.
MUTATIONS = {
    "memory limit 0 guard": ("(minitalk_memory_limit_bytes > 0)", "minitalk_memory_limit_bytes"),
    "ingest queue threshold": ("capacity_messages > 0) > 0.8", "capacity_messages > 0) >= 0.8"),
    "5xx only": ('{status=~"5.."}', '{status=~"[45].."}'),
    "message kind only": ('{kind="message"}', ""),
    "clients still connected": ("minitalk_connections offset 1h)", "minitalk_connections offset 1h) * 0"),
    "server down needs a minute": ('expr: up{job="minitalk"} == 0\n        for: 1m', "expr: up == 0\n        for: 0m"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_unit_tests_catch_a_broken_rule(mutation: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[mutation]
    rules = ALERTS.read_text()
    assert rules.count(old) == 1, f"the mutation's text is not (once) in alerts.yml: {old!r}"
    (tmp_path / "alerts.yml").write_text(rules.replace(old, new))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    done = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0, f"the unit tests pass with the {mutation} broken:\n{done.stdout}"

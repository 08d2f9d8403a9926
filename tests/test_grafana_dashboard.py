"""``deploy/grafana/minitalk-dashboard.json``: valid, importable, and querying only metrics that exist.

The metric names come from a live ``/metrics`` scrape of a running server, so a renamed or removed metric
breaks this test instead of leaving an empty panel. Besides the server's own, a query may name the
standard series Prometheus itself makes (``up``, ``ALERTS``) and the process collector's (``process_*``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "minitalk-dashboard.json"
STANDARD = {"up", "ALERTS", "ALERTS_FOR_STATE"}
STANDARD_PREFIXES = ("process_",)
# What the dashboard must show (issue 14, item 4): one name per panel subject.
REQUIRED = {
    "minitalk_connections",
    "minitalk_messages_accepted_total",
    "minitalk_deliveries_total",
    "minitalk_receive_to_commit_seconds_bucket",
    "minitalk_commit_seconds_bucket",
    "minitalk_commit_to_write_seconds_bucket",
    "minitalk_outbox_bytes",
    "minitalk_largest_outbox_bytes",
    "minitalk_catchup_backlog_messages",
    "minitalk_lagging_members",
    "minitalk_rate_limits_hit_total",
    "minitalk_event_loop_lag_seconds_bucket",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "minitalk_http_requests_total",
    "minitalk_disconnects_total",
    "ALERTS",
}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}
# Series names a family of each type exposes, besides the family's own name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in all_panels(dashboard) for target in panel.get("targets", [])]
    exprs += [variable["query"]["query"] for variable in dashboard["templating"]["list"]]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL query (with Grafana's ``$variables``) selects."""
    text = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", expr)  # label_values(metric{...}, label)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"\b[A-Za-z_:][\w:]*\b(\s*\()?", text):
        word = match.group(0).rstrip("( \t\n")
        if match.group(1) is None and word not in KEYWORDS:  # followed by "(": a function or aggregation
            names.add(word)
    return names


async def exported_names(http: httpx.AsyncClient) -> set[str]:
    """The series names the running server exposes, including those of families with no sample yet."""
    text = (await http.get("/metrics")).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(f"{family.name}{suffix}" for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_extractor_finds_metric_names_and_only_them() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(minitak_typo_seconds_bucket{job=~"$job"}'
        '[$__rate_interval]))) / on (instance) group_left max(up{job="a"} offset 1h) > bool 1e3 '
        "and label_values(minitalk_build_info, job)"
    )
    assert metric_names(expr) == {"minitak_typo_seconds_bucket", "up", "minitalk_build_info"}


def test_the_dashboard_is_importable_json_with_unique_panel_ids() -> None:
    dashboard = load()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [entry["name"] for entry in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = all_panels(dashboard)
    ids = Counter(panel["id"] for panel in panels)
    assert all(count == 1 for count in ids.values()), f"panel ids used twice: {[i for i, n in ids.items() if n > 1]}"
    assert len(panels) >= 20
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    assert len({panel["title"] for panel in panels}) == len(panels), "two panels with one title"


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(load()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


async def test_every_query_names_only_metrics_the_server_exports(client: httpx.AsyncClient) -> None:
    exported = await exported_names(client)
    used = set().union(*(metric_names(expr) for expr in queries(load())))
    assert used >= REQUIRED, f"the dashboard does not show: {sorted(REQUIRED - used)}"
    unknown = {
        name
        for name in used
        if name not in exported and name not in STANDARD and not name.startswith(STANDARD_PREFIXES)
    }
    assert not unknown, f"queried but not exported by the server: {sorted(unknown)}"

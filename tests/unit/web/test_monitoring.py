"""What operations teams run against the node: the Prometheus alert rules (checked and
unit-tested by promtool, Debian `prometheus`) and the Grafana dashboard, whose every query
names only metrics, and labels, that the node's /metrics really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.runtime import metrics
from tests.support.environment import require

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "ainode-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "ainode-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ainode.json"
PROMTOOL = "/usr/bin/promtool"
METRIC = re.compile(r"\b(ainode_[a-z_]+|up)\b")
BY = re.compile(r"\bby \(([^)]*)\)")
PROMQL_LABELS = {"le", "instance", "job"}  # added by the histogram or by the scrape


def promtool(*arguments: str) -> str:
    require(PROMTOOL)
    result = subprocess.run([PROMTOOL, *arguments], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))
    promtool("check", "config", str(RULES.parent / "prometheus.yml"))


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts == tested


def exported(client: Any) -> dict[str, set[str] | None]:
    """Metric names as queries use them (counters end in _total, histograms have _bucket,
    _sum, _count), each with its label names where they are known."""
    text = client.get("/metrics").text
    names: dict[str, set[str] | None] = {"up": set()}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        suffixes = {"histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        if kind == "counter" and not name.endswith("_total"):
            suffixes = ["_total"]
        if kind == "info" and not name.endswith("_info"):
            suffixes = ["_info"]
        for suffix in suffixes:
            names[name + suffix] = None
    for sample, labels in re.findall(r"^(ainode_[a-z_]+)\{([^}]*)\}", text, re.MULTILINE):
        found = names.get(sample) or set()
        names[sample] = found | set(re.findall(r'(\w+)="', labels))
    for family in (metrics.INSTANCES_RECEIVED, metrics.INSTANCES_REFUSED,
                   metrics.SERIES_COMPLETED, metrics.JOBS_FINISHED, metrics.RESULTS,
                   metrics.STAGE_SECONDS, metrics.TRITON_SECONDS):
        for suffix in ("_total", "_bucket", "_sum", "_count"):
            if family._name + suffix in names:
                names[family._name + suffix] = set(family._labelnames)
    return names


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and every dashboard panel target."""
    found = [(f"rule {rule['alert']}", rule["expr"])
             for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    found += [(f"panel {panel['title']}", target["expr"])
              for panel in dashboard["panels"] for target in panel["targets"]]
    found += [("variable instance", dashboard["templating"]["list"][1]["definition"])]
    return found


@pytest.mark.parametrize("where, expr", queries())
def test_each_query_names_metrics_and_labels_the_node_exports(
        where: str, expr: str, make_client: Any) -> None:
    client, _ = make_client()
    names = exported(client)
    used = set(METRIC.findall(expr))
    assert used, f"{where}: names no metric"
    assert used <= set(names), f"{where}: {sorted(used - set(names))} not exported"
    known = set().union(*(names[n] or set() for n in used)) | PROMQL_LABELS
    for group in BY.findall(expr):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        if all(names[n] is not None for n in used):
            assert labels <= known, f"{where}: labels {sorted(labels - known)} not on {used}"


def test_the_dashboard_covers_what_operations_watch() -> None:
    text = DASHBOARD.read_text()
    for metric in ("ainode_instances_received_total", "ainode_queue_depth",
                   "ainode_stage_duration_seconds_bucket", "ainode_jobs_finished_total",
                   "ainode_disk_free_bytes", "ainode_results_assessed_total"):
        assert metric in text, metric

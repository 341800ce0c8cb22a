"""A real Prometheus (Debian) scrapes a real `ainode serve` and evaluates the shipped alert
rules (deploy/prometheus/ainode-rules.yml): after a chest film whose results the PACS (dcmtk
storescp --refuse) will never take, the dead-letter alert fires and no other does. The node
logs with --log-format json meanwhile: every line one JSON object, none with patient data."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from tests.support.environment import DCMTK_ENV, ROOT, free_port, require, wait_for, wait_port
from tests.support.node import storescu
from tests.support.radiographs import radiograph

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
STORESCP = "/usr/bin/storescp"
RULES = ROOT / "deploy" / "prometheus" / "ainode-rules.yml"


def prometheus_api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())["data"]


def ready(port: int) -> bool:
    """Prometheus answers 503 until its storage is open."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def rule_states(port: int) -> dict[str, str]:
    """Each alerting rule's state: inactive, pending or firing."""
    groups = prometheus_api(port, "/api/v1/rules?type=alert")["groups"]
    return {rule["name"]: rule["state"] for group in groups for rule in group["rules"]}


def test_prometheus_fires_the_dead_letter_alert_and_no_other(
        tmp_path: Path, node_factory: Any) -> None:
    require(PROMETHEUS)
    require(STORESCP)
    pacs_port, prometheus_port = free_port(), free_port()
    refusing = subprocess.Popen([STORESCP, "--refuse", str(pacs_port)], env=DCMTK_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = node_factory(
        peers=[{"name": "PACS", "ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs_port},
               {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                "port": 11113}],
        series={"quiet_seconds": 1},
        inference={"model_repository": str(ROOT / "model_repository")},
        egress={"retry_s": 0.5, "max_retry_s": 1, "interval_s": 0.3},
        pipelines=[{"name": "cxr-lungs", "match": {"modality": ["CR", "DX"]},
                    "model": "cxr_lung_seg", "outputs": ["sr"], "destinations": ["PACS"]}])
    node.arguments = ("--log-format", "json")
    node.start()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "ainode", "metrics_path": "/metrics",
                                  "static_configs": [
                                      {"targets": [f"127.0.0.1:{node.http_port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(pacs_port, proc=refusing)
        wait_port(prometheus_port, timeout=60, proc=prometheus)
        assert wait_for(lambda: ready(prometheus_port), 60, 0.3)
        assert wait_for(lambda: any(
            target["health"] == "up" for target in
            prometheus_api(prometheus_port, "/api/v1/targets")["activeTargets"]), 60, 0.5)
        assert "firing" not in rule_states(prometheus_port).values()
        film = radiograph(tmp_path, "plain", "MONITOR-0042")
        sent = storescu(node, film)
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert wait_for(lambda: node.query("SELECT state FROM outbox") == [("dead",)], 120,
                        0.5), (node.query("SELECT state, error FROM outbox"), node.log()[-3000:])

        def settled() -> bool:
            states = rule_states(prometheus_port)
            return states.pop("AinodeDeadLetters") == "firing" and set(states.values()) == {
                "inactive"}

        assert wait_for(settled, 90, 1), rule_states(prometheus_port)
        (alert,) = [a for a in prometheus_api(prometheus_port, "/api/v1/alerts")["alerts"]
                    if a["state"] == "firing"]
        assert alert["labels"]["alertname"] == "AinodeDeadLetters"
        assert alert["annotations"]["summary"].startswith("1 results in the dead letter")
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        refusing.terminate()
        refusing.wait(timeout=10)
    node.stop()
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    assert {"time", "level", "role", "logger", "event"} <= set(lines[0])
    assert any(line.get("job_id") for line in lines)
    assert any(line.get("series_uid") for line in lines)
    patient = pydicom.dcmread(film, stop_before_pixels=True)
    for value in (str(patient.PatientName), str(patient.PatientID)):
        assert value not in node.log()

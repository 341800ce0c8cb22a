from __future__ import annotations

from pathlib import Path

import yaml

from node.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_the_node_with_the_shipped_config() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["ainode"]
    assert service["command"][:2] == ["ainode", "serve"]
    settings = load_settings(ROOT / "config" / "node.yaml", environ={})
    published = {int(p.split(":")[1].split("/")[0]) for p in service["ports"]}
    assert {settings.node.dicom_port, settings.node.http_port} <= published
    assert service["environment"]["AINODE__NODE__DATA_DIR"] in " ".join(service["volumes"])
    assert set(compose["volumes"]) == {"ainode-data"}

"""Orthanc as the real PACS: it pushes a study to the node; `ainode send` stores into it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import ct_files, free_port, wait_for
from tests.support.orthanc import Orthanc, start_orthanc

pytestmark = pytest.mark.integration

@pytest.fixture
def orthanc(tmp_path: Path, node_factory: Any) -> Iterator[tuple[Orthanc, Any]]:
    """A real Orthanc whose modality `ainode` is a node started with Orthanc as its PACS peer."""
    http_port, dicom_port = free_port(), free_port()
    node = node_factory(peers=[
        {"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port},
        {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1", "port": 11113},
    ])
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        yield pacs, node


def test_orthanc_pushes_a_study_to_the_node(orthanc: tuple[Orthanc, Any]) -> None:
    pacs, node = orthanc
    node.start()
    for f in ct_files():
        pacs.api("/instances", f.read_bytes())
    studies = pacs.api("/studies")
    assert len(studies) == 1
    job = pacs.api("/modalities/ainode/store",
                   json.dumps({"Resources": studies, "Synchronous": True}))
    assert job["InstancesCount"] == 134 and job["FailedInstancesCount"] == 0
    assert len(node.stored_files()) == 134
    rows = node.query("SELECT calling_ae, instance_count FROM series")
    assert rows == [("ORTHANC", 134)]
    assert wait_for(lambda: node.query("SELECT state FROM series") == [("complete",)], 15)


def test_ainode_send_stores_into_orthanc(orthanc: tuple[Orthanc, Any]) -> None:
    pacs, node = orthanc
    ainode = str(Path(sys.executable).parent / "ainode")
    result = subprocess.run(
        [ainode, "send", "--config", str(node.config_path), "--to", "PACS",
         str(ct_files()[0].parent)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0x0000" in result.stdout and "134" in result.stdout
    assert pacs.api("/statistics")["CountInstances"] == 134


def test_ainode_send_exits_non_zero_when_the_peer_is_down(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"data_dir": str(tmp_path / "var")},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                   "port": free_port()}],
    }))
    ainode = str(Path(sys.executable).parent / "ainode")
    result = subprocess.run([ainode, "send", "--config", str(config), "--to", "PACS",
                             str(ct_files()[0])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no association with PACS" in result.stderr


def test_ainode_echo_orthanc(orthanc: tuple[Orthanc, Any]) -> None:
    _pacs, node = orthanc
    ainode = str(Path(sys.executable).parent / "ainode")
    result = subprocess.run([ainode, "echo", "PACS", "--config", str(node.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "status 0x0000" in result.stdout

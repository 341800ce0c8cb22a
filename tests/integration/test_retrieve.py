"""On-demand retrieve from a real Orthanc: by C-GET (admin API), by C-MOVE to the node's own
AE and by WADO-RS (``ainode run``); the instances are kept as received and the series
routed as if pushed (a radiograph's job runs)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.environment import ROOT, ct_files, free_port, wait_for, wait_port
from tests.support.node import NodeProcess, http_call
from tests.support.orthanc import start_orthanc
from tests.support.radiographs import radiograph

pytestmark = pytest.mark.integration


def _post(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return http_call(port, path, body, timeout=300)


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_studies_retrieved_by_get_move_and_wado_are_routed_as_if_pushed(
        node_factory: Any, tmp_path: Path) -> None:
    orthanc_http, orthanc_dicom, http_port = free_port(), free_port(), free_port()
    node: NodeProcess = node_factory(
        node={"http_port": http_port},
        peers=[{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                "port": orthanc_dicom},
               {"name": "PACS-MOVE", "ae_title": "ORTHANC", "host": "127.0.0.1",
                "port": orthanc_dicom, "retrieve": "move"},
               {"name": "PACS-WEB", "ae_title": "ORTHANC", "host": "127.0.0.1",
                "port": orthanc_dicom, "dicomweb_url": f"http://127.0.0.1:{orthanc_http}"
                                                       "/dicom-web"}],
        series={"quiet_seconds": 1, "sweep_interval_s": 0.2},
        inference={"model_repository": str(ROOT / "model_repository")},
        pipelines=[{"name": "cxr-mass", "match": {"modality": ["CR", "DX"]},
                    "model": "cxr_mass_cls", "outputs": ["sr"]}])
    ct = ct_files()[:3]
    films = [radiograph(tmp_path, kind, f"RETRIEVE-{kind}") for kind in ("mass", "plain")]
    with start_orthanc(tmp_path, orthanc_http, orthanc_dicom, node.port) as pacs:
        pacs.upload(ct)
        pacs.upload(films[:1])
        pacs.upload(films[1:])
        node.start()
        wait_port(http_port, timeout=60, proc=node.proc)

        status, answer = _post(http_port, f"/api/studies/{_study(ct[0])}/run",
                               {"from": "PACS"})
        assert status == 200, answer
        assert (answer["method"], answer["stored"], answer["failed"]) == ("get", 3, {})
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics",
                                    timeout=30) as response:
            metrics = response.read().decode()
        assert 'ainode_instances_received_total{transport="retrieve"} 3.0' in metrics
        # counted as retrieved, not as pushed (those series exist from the start, at 0)
        for pushed in ("stow", "dimse"):
            assert f'ainode_instances_received_total{{transport="{pushed}"}} 0.0' in metrics

        config = str(node.config_path)
        ainode = str(Path(sys.executable).parent / "ainode")
        moved = subprocess.run([ainode, "run", _study(films[0]), "--from", "PACS-MOVE",
                                "--config", config], capture_output=True, text=True,
                               timeout=300)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "1 stored by move" in moved.stdout
        fetched = subprocess.run([ainode, "run", _study(films[1]), "--from", "PACS-WEB",
                                  "--config", config], capture_output=True, text=True,
                                 timeout=300)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        assert "1 stored by wado" in fetched.stdout

        status, answer = _post(http_port, "/api/studies/1.2.3.999/run", {"from": "PACS"})
        # Orthanc refuses an unknown study (0xC000); a PACS that answers success with nothing
        # gets "sent no instance of that study"
        assert (status, answer["detail"]) == (502, "PACS answered C-GET with 0xC000")
        assert _post(http_port, "/api/studies/1.2.3/run", {"from": "NOPE"})[0] == 404

    # kept as the PACS has them, from the PACS's AE title, and routed like pushed series
    kept = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in node.stored_files()}
    for original in [*ct, *films]:
        uid = str(pydicom.dcmread(original, stop_before_pixels=True).SOPInstanceUID)
        assert pydicom.dcmread(kept[uid]).PixelData == pydicom.dcmread(original).PixelData
    assert node.query("SELECT DISTINCT calling_ae FROM series") == [("ORTHANC",)]
    assert wait_for(lambda: sorted(node.query("SELECT state FROM jobs")) == [("done",),
                                                                             ("done",)],
                    180, 0.3), (node.query("SELECT * FROM jobs"), node.log()[-2000:])
    assert node.query("SELECT route_state FROM series WHERE modality='CT'") == [("skipped",)]
    actions = [a for (a,) in node.query("SELECT action FROM audit")]
    assert actions.count("study retrieved") == 3 and "study retrieve failed" in actions

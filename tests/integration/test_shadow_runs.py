"""Model versions side by side and a shadow run (README: *Managing models and results*):
ct_body_seg kept as version 1 and a version 2 whose dense-matter threshold is 300 HU instead of
250; the live pipeline pins version 1 and delivers to Orthanc, a shadow pipeline runs version 2
on the shared CT and delivers nothing. The comparison (Dice, volume difference, agreement) is
kept and shown by the API, the dashboard (an SVG plot) and ``/metrics``; results name the
exact version."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml

from node.imaging.volume import load_series
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.runner import run_model
from node.infer.triton import TritonBackend
from tests.support.dicom_checks import fetch
from tests.support.environment import CT_DIR, ROOT, free_port, wait_for
from tests.support.node import ct_body_node_sections, http_call, storescu
from tests.support.orthanc import start_orthanc

pytestmark = pytest.mark.integration


def two_versions(repository: Path) -> None:
    """ct_body_seg as shipped (v1, 1.1.0) and with dense matter from 300 HU (v2, 1.2.0), one
    config.pbtxt naming both."""
    shutil.copytree(ROOT / "model_repository" / "ct_body_seg", repository / "ct_body_seg")
    sys.path.insert(0, str(ROOT / "models"))
    try:
        module = importlib.import_module("ct_body_seg")
        module.DENSE_HU = 300.0  # read when the module is traced for export
        with warnings.catch_warnings():  # torch's notice about its legacy ONNX exporter
            warnings.simplefilter("ignore")
            module.export(repository / "ct_body_seg" / "2" / "model.onnx")
    finally:
        sys.path.remove(str(ROOT / "models"))
        sys.modules.pop("ct_body_seg", None)
    config = repository / "ct_body_seg" / "config.pbtxt"
    versions = json.dumps({"1": "1.1.0", "2": "1.2.0"}).replace('"', '\\"')
    config.write_text(config.read_text() + 'parameters: { key: "ainode_versions" value: '
                      f'{{ string_value: "{versions}" }} }}\n')


def readme_pipelines() -> list[dict[str, Any]]:
    """The README's shadow example, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**Versions side by side, and shadow runs.**", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return list(yaml.safe_load(snippet)["pipelines"])


def test_a_shadow_version_runs_beside_the_live_one_and_delivers_nothing(
    tmp_path: Path, node_factory: Any,
) -> None:
    repository = tmp_path / "repository"
    two_versions(repository)
    http_port, pacs_port = free_port(), free_port()
    sections = ct_body_node_sections(pacs_port)
    sections["inference"] = {"model_repository": str(repository)}
    sections["pipelines"] = readme_pipelines()
    assert [p.get("mode", "live") for p in sections["pipelines"]] == ["live", "shadow"]
    node = node_factory(**sections).start()
    listing = node_cli(node, "models", "list")
    assert re.search(r"ct_body_seg .*1\.2\.0 .*v2, v1 .*ct-body \(v1\), ct-body-next", listing)
    files = sorted(CT_DIR.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with start_orthanc(tmp_path, http_port, pacs_port, node.port) as pacs:
        assert storescu(node, *files).returncode == 0
        assert wait_for(lambda: node.query("SELECT COUNT(*) FROM shadow_comparisons")
                        == [(1,)], 120, 0.3), node.log()[-3000:]
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(2,)], 60, 0.3)
        results = {row[0]: json.loads(row[1]) for row in node.query(
            "SELECT pipeline, result FROM jobs WHERE state='done'")}
        assert results["ct-body"]["model_version"] == "1.1.0 v1"
        assert results["ct-body-next"]["model_version"] == "1.2.0 v2"
        assert node.query("SELECT COUNT(*) FROM outbox WHERE job_id IN (SELECT id FROM jobs"
                          " WHERE pipeline='ct-body-next')") == [(0,)]
        found = pacs.series_by_modality(study_uid)
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1  # the live results only
        (seg,) = fetch(pacs, study_uid, found["SEG"][0])
        assert "ct_body_seg 1.1.0 v1" in seg.SeriesDescription

    # the comparison, from its masks: the same labels as independent numbers
    live_dir, shadow_dir = (Path(results[p]["result_dir"]) for p in ("ct-body", "ct-body-next"))
    dense, dense_next = (np.load(d / "labels.npy") == 3 for d in (live_dir, shadow_dir))
    dice = 2 * float((dense & dense_next).sum()) / float(dense.sum() + dense_next.sum())
    assert 0.5 < dice < 0.9999, dice  # the versions differ, and not by much
    status, answer = http_call(node.http_port, "/api/shadow?pipeline=ct-body-next")
    assert status == 200, answer
    (comparison,) = answer["comparisons"]
    assert comparison["labels"]["dense"]["dice"] == pytest.approx(dice, abs=1e-4)
    assert comparison["labels"]["dense"]["volume_difference_ml"] == pytest.approx(
        results["ct-body-next"]["labels"]["dense"]["volume_ml"]
        - results["ct-body"]["labels"]["dense"]["volume_ml"], abs=1e-2)
    assert comparison["labels"]["gas"]["dice"] == 1.0  # 300 HU does not change the gas
    assert comparison["agreement"] == 1.0
    summary = answer["summary"]["ct-body-next"]
    assert summary["series_compared"] == 1 and summary["live_pipeline"] == "ct-body"
    assert summary["median_dice"]["dense"] == pytest.approx(dice, abs=1e-4)
    status, metrics = http_call(node.http_port, "/metrics")
    line = 'ainode_shadow_agreement{label="dense",pipeline="ct-body-next"} '
    value = next(entry for entry in metrics.splitlines() if entry.startswith(line))
    assert float(value.split()[-1]) == pytest.approx(dice, abs=1e-4)
    status, page = http_call(node.http_port, "/ui/shadow")
    assert status == 200 and "<polyline" in page and "series compared" in page, page[:500]


def node_cli(node: Any, *arguments: str) -> str:
    ainode = str(Path(sys.executable).parent / "ainode")
    done = subprocess.run([ainode, *arguments, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_triton_serves_the_pinned_version_as_the_embedded_backend_does(
    tmp_path: Path, private_triton: Any,
) -> None:
    """Both versions loaded by a real tritonserver (``version_policy: all``): each pinned
    version gives on Triton the label map it gives in-process, and the two differ."""
    repository = tmp_path / "repository"
    two_versions(repository)
    config = repository / "ct_body_seg" / "config.pbtxt"
    config.write_text(config.read_text().replace(
        "version_policy: { latest: { num_versions: 1 } }", "version_policy: { all { } }"))
    private_triton.repository = repository
    private_triton.up()
    volume = load_series(sorted(CT_DIR.glob("*.dcm")))
    embedded, triton = EmbeddedBackend(), TritonBackend(private_triton.grpc_url)
    dense = {}
    try:
        for version in (1, 2):
            spec = load_model_spec(repository, "ct_body_seg", version)
            triton.check(spec)
            here, there = run_model(volume, spec, embedded), run_model(volume, spec, triton)
            assert np.array_equal(here, there), version
            dense[version] = int((here == 3).sum())
    finally:
        embedded.close()
        triton.close()
    assert dense[2] < dense[1]  # from 300 HU there is less dense matter than from 250

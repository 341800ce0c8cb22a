"""Drift (README: *Managing models and results*): the CT and the head MR through a running node
as the baseline, then a batch of the MR as if from another scanner (another manufacturer, thinner
slices): the drift shows in the API, on /readyz, in /metrics, on the dashboard and in the log,
for the MR pipeline only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from tests.support.environment import CT_DIR, ROOT, free_port, wait_for
from tests.support.node import ct_body_node_sections, http_call, storescu

pytestmark = pytest.mark.integration
MR_DIR = CT_DIR.parent / "mr-brain"


def readme_drift() -> dict[str, Any]:
    """The README's drift settings, as written there."""
    section = (ROOT / "README.md").read_text().split("**Watching for drift.**", 1)[1]
    return dict(yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])["drift"])


def another_scanner(folder: Path, copy: int) -> list[Path]:
    """The MR as a new series from another vendor's scanner with 3 mm slices."""
    folder.mkdir()
    series_uid = generate_uid()
    paths = []
    for index, source in enumerate(sorted(MR_DIR.glob("*.dcm"))):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.Manufacturer = "Another Vendor"
        dataset.ManufacturerModelName = "Scanner X"
        dataset.SliceThickness = "3"
        dataset.SeriesNumber = 800 + copy
        paths.append(folder / f"{index:03d}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_a_batch_from_another_scanner_shows_as_drift(tmp_path: Path, node_factory: Any) -> None:
    sections = ct_body_node_sections(free_port())
    sections["pipelines"] = [
        {"name": "ct-body", "match": {"modality": "CT"}, "model": "ct_body_seg", "outputs": []},
        {"name": "mr-head", "match": {"modality": "MR"}, "model": "mr_head_mask",
         "outputs": []},
    ]
    sections["drift"] = {**readme_drift(), "check_interval_s": 0.01}
    node = node_factory(**sections).start()

    def done() -> int:
        return int(node.query("SELECT COUNT(*) FROM jobs WHERE state='done'")[0][0])

    assert storescu(node, *sorted(CT_DIR.glob("*.dcm"))).returncode == 0
    assert storescu(node, *sorted(MR_DIR.glob("*.dcm"))).returncode == 0
    assert wait_for(lambda: done() == 2, 180, 0.3), node.log()[-3000:]
    status, report = http_call(node.http_port, "/api/drift")
    assert status == 200 and all(not d["drifted"] for d in report), report
    status, ready = http_call(node.http_port, "/readyz")
    assert status == 200 and ready["warnings"] == {}, ready

    for copy in range(3):
        assert storescu(node, *another_scanner(tmp_path / f"x{copy}", copy)).returncode == 0
    assert wait_for(lambda: done() == 5, 180, 0.3), node.log()[-3000:]
    status, report = http_call(node.http_port, "/api/drift")
    by_pipeline = {d["pipeline"]: d for d in report}
    mr, ct = by_pipeline["mr-head"], by_pipeline["ct-body"]
    assert (mr["baseline_jobs"], mr["recent_jobs"]) == (1, 3)
    assert {"input.manufacturer", "input.model_name", "input.slice_thickness_mm"} <= set(
        mr["drifted"]), mr["psi"]
    assert mr["psi"]["input.pixel_spacing_mm"] == 0.0  # what did not change does not drift
    assert "input.series_description" not in mr["drifted"]
    assert ct["drifted"] == [] and ct["recent_jobs"] == 0
    assert mr["days"][-1]["studies"] == 4
    status, ready = http_call(node.http_port, "/readyz")
    assert status == 200 and "input.manufacturer" in ready["warnings"]["drift mr-head"], ready
    status, metrics = http_call(node.http_port, "/metrics")
    line = next(entry for entry in metrics.splitlines() if entry.startswith(
        'ainode_drift_psi{feature="input.manufacturer",pipeline="mr-head"}'))
    assert float(line.split()[-1]) >= 0.25
    status, page = http_call(node.http_port, "/ui/drift")
    assert status == 200 and "<polyline" in page and "drifted" in page
    assert wait_for(lambda: "pipeline mr-head has drifted" in node.log(), 30, 0.3)

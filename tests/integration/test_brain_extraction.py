"""mr_brain_extraction (deepbet's two pretrained networks as two stages) checked against its
authors' own tool: the shared head MR converted by dcm2niix and run through deepbet's
``run_bet`` is the reference; the node's mask on both backends, and its SEG and SR as Orthanc
holds them, must agree with it (Dice >= 0.98, volume within 1 %), also for a copy of the series
sent in reverse order with its rows encoded the other way round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from numpy.typing import NDArray
from pydicom.uid import generate_uid

from node.imaging.volume import load_series
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.runner import run_model
from node.infer.triton import TritonBackend
from tests.support.deepbet_reference import MR_DIR, Reference, deepbet_reference, in_ras
from tests.support.dicom_checks import DCIODVFY, dciodvfy_errors, fetch, one_segment_mask
from tests.support.environment import ROOT, free_port, require, wait_for
from tests.support.node import ct_body_node_sections, storescu
from tests.support.orthanc import start_orthanc

pytestmark = pytest.mark.integration

MIN_DICE = 0.98
VOLUME_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return deepbet_reference(tmp_path_factory.mktemp("deepbet"))


def assert_matches(reference: Reference, labels: NDArray[Any],
                   affine_lps: NDArray[np.float64]) -> float:
    mask, affine = in_ras(labels, affine_lps)
    assert np.allclose(affine, reference.affine, atol=1e-2), (affine, reference.affine)
    assert mask.shape == reference.mask.shape
    dice = 2 * float((mask & reference.mask).sum()) / float(mask.sum() + reference.mask.sum())
    assert dice >= MIN_DICE, dice
    return dice


def volume_ml(labels: NDArray[Any], affine_lps: NDArray[np.float64]) -> float:
    return float(labels.astype(bool).sum()) * abs(float(np.linalg.det(affine_lps[:3, :3]))) / 1e3


def test_both_backends_give_deepbets_mask(reference: Reference, triton_grpc_url: str) -> None:
    volume = load_series(sorted(MR_DIR.glob("*.dcm")))
    model = load_model_spec(ROOT / "model_repository", "mr_brain_extraction")
    assert model.stages == {"bbox": "mr_brain_extraction_bbox",
                            "mask": "mr_brain_extraction_mask"}
    masks = {}
    for backend in (EmbeddedBackend(), TritonBackend(triton_grpc_url)):
        backend.check(model)
        masks[backend.name] = run_model(volume, model, backend)
        backend.close()
    assert np.array_equal(masks["embedded"], masks["triton"])
    assert_matches(reference, masks["embedded"], volume.affine)
    assert volume_ml(masks["embedded"], volume.affine) == pytest.approx(
        reference.volume_ml, rel=VOLUME_TOLERANCE)


def shipped_pipeline(name: str) -> dict[str, Any]:
    """The pipeline as config/node.yaml ships it."""
    pipelines = yaml.safe_load((ROOT / "config" / "node.yaml").read_text())["pipelines"]
    (pipeline,) = [p for p in pipelines if p["name"] == name]
    return dict(pipeline)


def reencoded_copy(folder: Path) -> list[Path]:
    """The series as a new one whose rows run the other way: pixel rows reversed, the column
    direction negated and the position moved to the old last row (the same voxels in space),
    files listed so that they are sent in reverse order of position."""
    paths = []
    series_uid = generate_uid()
    sources = sorted(MR_DIR.glob("*.dcm"), key=lambda p: float(
        pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[0]))
    for index, source in enumerate(sources):
        dataset = pydicom.dcmread(source)
        pixels = dataset.pixel_array[::-1].copy()
        orientation = [float(v) for v in dataset.ImageOrientationPatient]
        column = np.array(orientation[3:])
        position = np.array([float(v) for v in dataset.ImagePositionPatient])
        position += (int(dataset.Rows) - 1) * float(dataset.PixelSpacing[0]) * column
        dataset.ImageOrientationPatient = [*orientation[:3], *(-column).tolist()]
        dataset.ImagePositionPatient = [round(float(v), 6) for v in position]
        dataset.PixelData = pixels.tobytes()
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SeriesNumber = 900
        path = folder / f"{index:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[::-1]


def segmentation_and_volume(pacs: Any, study_uid: str, series_uid: str,
                            tmp_path: Path) -> tuple[hd.seg.Segmentation, float]:
    """The node's SEG and SR for the series ``series_uid``, as the PACS holds them, checked
    by dciodvfy; the SR's volume of the brain (ml)."""
    found = pacs.series_by_modality(study_uid)
    segs = [s for s in found["SEG"] for d in fetch(pacs, study_uid, s)
            if d.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid]
    (seg_ds,) = fetch(pacs, study_uid, segs[0])
    srs = [d for s in found["SR"] for d in fetch(pacs, study_uid, s)
           if series_uid in {str(e.SeriesInstanceUID)
                             for e in d.CurrentRequestedProcedureEvidenceSequence[0]
                             .ReferencedSeriesSequence}]
    (sr_ds,) = srs
    scs = [d for s in found.get("OT", []) + found.get("SC", []) + found.get("MR", [])
           for d in fetch(pacs, study_uid, s) if d.get("BurnedInAnnotation") == "YES"
           and d.SeriesInstanceUID != series_uid]
    assert scs, "no Secondary Capture in the PACS"
    for dataset in (seg_ds, sr_ds, scs[0]):
        assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    measurements = {m.name.meaning: m for m in group.get_measurements()}
    return hd.seg.Segmentation.from_dataset(seg_ds), float(measurements["Volume"].value)


def seg_labels(seg: hd.seg.Segmentation, files: list[Path]) -> tuple[NDArray[np.uint8],
                                                                     NDArray[np.float64]]:
    """The SEG's brain on the source volume's grid, and that grid's affine."""
    volume = load_series(files)
    uids = [ref.sop_instance_uid for ref in volume.slices]
    mask = one_segment_mask(seg, uids, "brain", "12738006")
    return mask.astype(np.uint8), volume.affine


@pytest.mark.parametrize("backend", ["embedded", "triton"])
def test_the_seg_and_sr_in_the_pacs_match_deepbet(
    backend: str, tmp_path: Path, node_factory: Any, reference: Reference,
    request: pytest.FixtureRequest,
) -> None:
    """Orthanc -> node (the shipped mr-brain pipeline) -> Orthanc: the SEG read back agrees
    with deepbet's mask, the SR's volume with its TIV; then the re-encoded copy, sent straight
    from dcmtk in reverse order, gives the same mask."""
    require(DCIODVFY)
    http_port, pacs_port = free_port(), free_port()
    sections = ct_body_node_sections(pacs_port)
    if backend == "triton":
        sections["inference"].update(
            backend="triton", triton_url=request.getfixturevalue("triton_grpc_url"))
    sections["pipelines"] = [shipped_pipeline("mr-brain")]
    node = node_factory(**sections).start()
    files = sorted(MR_DIR.glob("*.dcm"))
    copy = reencoded_copy(tmp_path)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with start_orthanc(tmp_path, http_port, pacs_port, node.port) as pacs:
        study = pacs.upload(files)
        pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                          "Synchronous": True}))
        sent = storescu(node, *copy)
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(6,)], 240, 0.5), (
            node.query("SELECT id, state, error FROM jobs"), node.log()[-3000:])
        results = {}
        for name, series in (("original", files), ("copy", copy)):
            series_uid = str(pydicom.dcmread(series[0], stop_before_pixels=True)
                             .SeriesInstanceUID)
            seg, sr_volume = segmentation_and_volume(pacs, study_uid, series_uid, tmp_path)
            results[name] = seg_labels(seg, series), sr_volume
    for (labels, affine), sr_volume in results.values():
        assert_matches(reference, labels, affine)
        assert sr_volume == pytest.approx(reference.volume_ml, rel=VOLUME_TOLERANCE)
    original, reencoded = (in_ras(*results[name][0])[0] for name in ("original", "copy"))
    assert np.array_equal(original, reencoded)

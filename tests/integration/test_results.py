"""Results back to the PACS: Orthanc -> node -> Orthanc, SEG / SR / SC checked as delivered."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.runtime.metrics import JOB_STAGES
from tests.support.dicom_checks import DCIODVFY, dciodvfy_errors, fetch, one_segment_mask
from tests.support.environment import (
    CT_DIR,
    DCMTK_ENV,
    ROOT,
    ct_files,
    free_port,
    require,
    wait_for,
    wait_port,
)
from tests.support.independent import body_gas_dense, read_ct
from tests.support.node import ct_body_node_sections, ct_body_pipeline, store_with_ct, storescu
from tests.support.orthanc import start_orthanc

pytestmark = pytest.mark.integration
def make_node(node_factory: Any, pacs_port: int, **extra: Any) -> Any:
    return node_factory(**{**ct_body_node_sections(pacs_port), **extra})






PIXELMED = "/usr/share/java/pixelmed.jar"


def pixelmed_errors(dataset: pydicom.Dataset, tmp_path: Path) -> list[str]:
    require(PIXELMED)
    path = tmp_path / "sr-for-pixelmed.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run(
        ["java", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
         "-Djdk.xml.xpathTotalOpLimit=0", "-cp", PIXELMED,
         "com.pixelmed.validate.DicomSRValidator", str(path)],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "IOD validation complete" in output, output[-2000:]
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_seg_sr_sc_reach_orthanc_aligned_and_valid(tmp_path: Path, node_factory: Any) -> None:
    require(DCIODVFY)
    http_port, dicom_port = free_port(), free_port()
    node = make_node(node_factory, dicom_port).start()
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        study = pacs.upload(ct_files())
        job = pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                                "Synchronous": True}))
        assert job["FailedInstancesCount"] == 0
        study_uid = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
                        .StudyInstanceUID)
        assert wait_for(lambda: len(node.query(
            "SELECT * FROM outbox WHERE state='sent'")) == 3, 120, 0.5), (
            node.query("SELECT * FROM jobs"), node.query("SELECT * FROM outbox"),
            node.log()[-3000:])
        found = pacs.series_by_modality(study_uid)
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
        sc_series = found.get("OT", []) + found.get("SC", [])
        assert len(sc_series) == 1
        trail = dict((action, detail) for action, detail in node.query(
            "SELECT action, detail FROM audit"))  # the audit trail of what happened
        assert trail["association released"].startswith("from 127.0.0.1: 134 instance(s)")
        assert "ct-body on ct_body_seg 1.1.0" in trail["job done"]
        ((result,),) = node.query("SELECT result FROM jobs")
        seconds = json.loads(result)["seconds"]  # every stage the jobs page and metrics show
        assert set(JOB_STAGES) <= set(seconds) and seconds["write"] > 0, seconds
        def sent_to_pacs() -> int:
            return sum(int(detail.split()[0]) for (detail,) in node.query(
                "SELECT detail FROM audit WHERE action='results sent'")
                if f"to PACS (ORTHANC@127.0.0.1:{dicom_port})" in detail)
        assert wait_for(lambda: sent_to_pacs() == 3, 10, 0.2), node.query("SELECT * FROM audit")

        (seg_ds,) = fetch(pacs, study_uid, found["SEG"][0])
        (sr_ds,) = fetch(pacs, study_uid, found["SR"][0])
        (sc_ds,) = fetch(pacs, study_uid, sc_series[0])

        # every object passes the IOD validator
        for dataset in (seg_ds, sr_ds, sc_ds):
            assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name

        # SEG: same study / frame of reference; masks on the source grid = independent twin
        source = pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
        assert seg_ds.StudyInstanceUID == source.StudyInstanceUID
        assert seg_ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        seg = hd.seg.Segmentation.from_dataset(seg_ds)
        labels_by_name = {d.SegmentLabel: d.SegmentNumber for d in seg.SegmentSequence}
        assert set(labels_by_name) == {"body", "gas", "dense"}
        assert all("RecommendedDisplayCIELabValue" in d for d in seg.SegmentSequence)
        hu, uids = read_ct(CT_DIR)
        expected = body_gas_dense(hu)
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[labels_by_name[n] for n in
                                                            ("body", "gas", "dense")],
            ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
        for index, value in enumerate((1, 2, 3)):
            assert np.array_equal(masks[..., index] > 0, expected == value), value

        # SR: one volumetric group per segment, its volume = SEG voxels x voxel volume
        sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
        voxel_ml = 3.0 * float(source.PixelSpacing[0]) * float(source.PixelSpacing[1]) / 1000
        groups = sr.content.get_volumetric_roi_measurement_groups()
        assert len(groups) == 3
        for group in groups:
            (number,) = group.referenced_segment.referenced_segment_numbers
            value = {v: k for k, v in labels_by_name.items()}[number]
            volume = next(m for m in group.get_measurements() if m.name.meaning == "Volume")
            count = int((expected == {"body": 1, "gas": 2, "dense": 3}[value]).sum())
            assert volume.value == pytest.approx(count * voxel_ml, abs=1e-3)
            assert volume.unit.value == "ml"
        planar = sr.content.get_planar_roi_measurement_groups()
        assert len(planar) == 3 and all(g.roi is not None for g in planar)

        # the SR is a valid TID 1500 for PixelMed's validator (it exits 0 even on errors)
        assert pixelmed_errors(sr_ds, tmp_path) == []

        # SC: burned in, same study, RGB
        assert sc_ds.StudyInstanceUID == source.StudyInstanceUID
        assert sc_ds.BurnedInAnnotation == "YES" and sc_ds.SamplesPerPixel == 3

        # the same study again: the same UIDs, so still exactly one of each in the PACS
        pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                          "Synchronous": True}))
        assert wait_for(lambda: node.query("SELECT COUNT(*) FROM jobs WHERE state='done'")
                        == [(2,)], 120, 0.5)
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state!='sent'") == [(0,)], 60, 0.5)
        again = pacs.series_by_modality(study_uid)
        assert len(again["SEG"]) == len(again["SR"]) == 1
        assert pacs.api(f"/studies/{study}")["Series"].__len__() == 4  # CT + SEG + SR + SC
        assert [s["00201209"]["Value"][0] for s in again["SEG"]] == [1]


def test_pacs_down_then_back_delivers_from_the_outbox(tmp_path: Path, node_factory: Any) -> None:
    http_port, dicom_port = free_port(), free_port()
    node = make_node(node_factory, dicom_port).start()  # nothing listens on dicom_port yet
    result = storescu(node, *ct_files())
    assert result.returncode == 0
    assert wait_for(lambda: node.query(
        "SELECT COUNT(*) FROM outbox WHERE state='queued' AND attempts>=2") == [(3,)], 120, 0.5)
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(3,)], 60, 0.5), (
            node.query("SELECT * FROM outbox"))
        assert pacs.api("/statistics")["CountInstances"] == 3


STORESCP_CT_ONLY = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[CTOnly]
PresentationContext1 = CTImageStorage\\Uncompressed
[[Profiles]]
[CTOnlyProfile]
PresentationContexts = CTOnly
"""


def test_destination_refusing_the_sop_class_ends_in_the_dead_letter(
    tmp_path: Path, node_factory: Any
) -> None:
    """A real dcmtk storescp that accepts CT only: SEG/SR/SC are dead-lettered with a reason."""
    require("/usr/bin/storescp")
    port = free_port()
    config = tmp_path / "storescp.cfg"
    config.write_text(STORESCP_CT_ONLY)
    out = tmp_path / "received"
    out.mkdir()
    with subprocess.Popen(["/usr/bin/storescp", "-aet", "ORTHANC", "-xf", str(config),
                           "CTOnlyProfile", "-od", str(out), str(port)], env=DCMTK_ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as scp:
        try:
            wait_port(port, proc=scp)
            node = make_node(node_factory, port).start()
            result = storescu(node, *ct_files())
            assert result.returncode == 0
            assert wait_for(lambda: node.query(
                "SELECT COUNT(*) FROM outbox WHERE state='dead'") == [(3,)], 120, 0.5), (
                node.query("SELECT * FROM outbox"))
            errors = [r[0] for r in node.query("SELECT error FROM outbox")]
            assert all("presentation context" in e.lower() for e in errors), errors
            given_up = node.query("SELECT detail FROM audit WHERE action='delivery given up'")
            assert len(given_up) == 3 and all(" to PACS: refused" in d for (d,) in given_up)
            assert list(out.iterdir()) == []
        finally:
            scp.terminate()


def test_stow_rs_with_basic_auth_delivers_to_dicomweb(tmp_path: Path, node_factory: Any) -> None:
    """A DICOMweb destination (Orthanc's STOW-RS, HTTP basic auth required) gets the results."""
    http_port, dicom_port = free_port(), free_port()
    web = {"name": "WEB", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port,
           "dicomweb_url": f"http://127.0.0.1:{http_port}/dicom-web",
           "username": "ainode", "password": "s3cret"}
    node = node_factory(
        peers=[web, {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                     "port": 11113}],
        series={"quiet_seconds": 1},
        inference={"model_repository": str(ROOT / "model_repository")},
        egress={"retry_s": 0.5, "max_retry_s": 1, "interval_s": 0.3},
        pipelines=[ct_body_pipeline("WEB")],
    ).start()
    with start_orthanc(tmp_path, http_port, dicom_port, node.port,
                       users={"ainode": "s3cret"}) as pacs:
        result = storescu(node, *ct_files())
        assert result.returncode == 0
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(3,)], 120, 0.5), (
            node.query("SELECT * FROM outbox"), node.log()[-2000:])
        assert pacs.api("/statistics")["CountInstances"] == 3
        with pytest.raises(urllib.error.HTTPError) as denied:  # the credentials were needed
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=10)
        assert denied.value.code == 401
        denied.value.close()
        modalities = sorted(pacs.api(f"/series/{s}")["MainDicomTags"]["Modality"]
                            for s in pacs.api("/series"))
        assert modalities == ["OT", "SEG", "SR"]


def test_outbox_routing_reply_to_sender_per_destination_kinds_and_urgency(tmp_path: Path) -> None:
    """Without a network: which objects are queued for whom, and how urgent they are."""
    from node.infer.embedded import EmbeddedBackend
    from node.jobs.orchestrator import Orchestrator
    from node.settings import load_settings

    config = tmp_path / "node.yaml"
    pipeline = {**ct_body_pipeline(), "reply_to_sender": True,
                "destinations": ["PACS", "VIEWER"],
                "urgent_if": [{"label": "gas", "min_volume_ml": 100}]}
    config.write_text(json.dumps({
        "node": {"data_dir": str(tmp_path / "var")},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1},
                  {"name": "VIEWER", "ae_title": "OLDVIEW", "host": "127.0.0.1", "port": 2,
                   "results": ["sc"]},
                  {"name": "MODALITY", "ae_title": "CTSCAN", "host": "127.0.0.1", "port": 3}],
        "inference": {"model_repository": str(ROOT / "model_repository")},
        "pipelines": [pipeline],
    }))
    store, key = store_with_ct(tmp_path, calling_ae="CTSCAN")
    orchestrator = Orchestrator(load_settings(config, environ={}), store, EmbeddedBackend())
    orchestrator.series_complete(key)
    assert orchestrator.run_next() is not None
    rows = store.query(
        "SELECT destination, kind, priority FROM outbox ORDER BY destination, kind")
    assert rows == [("MODALITY", "sc", 10), ("MODALITY", "seg", 10), ("MODALITY", "sr", 10),
                    ("PACS", "sc", 10), ("PACS", "seg", 10), ("PACS", "sr", 10),
                    ("VIEWER", "sc", 10)]
    (summary,) = [json.loads(r[0]) for r in store.query("SELECT result FROM jobs")]
    assert summary["urgent"] is True
    sr = pydicom.dcmread(Path(summary["result_dir"]) / "sr.dcm")
    assert "Urgent" in str(sr.ContentSequence)


def readme_pipelines() -> list[dict[str, Any]]:
    """The pipeline example of README.md, exactly as written there."""
    import yaml

    text = (ROOT / "README.md").read_text()
    section = text.split("## Pipelines, models and Triton", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    pipelines = yaml.safe_load(block)["pipelines"]
    assert pipelines and "segments" not in pipelines[0], "the README shows a pipeline as is"
    return pipelines  # type: ignore[no-any-return]


def test_the_readme_pipeline_as_written_delivers_seg_and_sr(
    tmp_path: Path, node_factory: Any
) -> None:
    """A new user's node: the README's pipeline snippet, no segment codes of its own (the
    model declares them). The CT pushed by Orthanc comes back as SEG and SR."""
    http_port, dicom_port = free_port(), free_port()
    node = node_factory(**{**ct_body_node_sections(dicom_port),
                           "pipelines": readme_pipelines()}).start()
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        study = pacs.upload(ct_files())
        pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                          "Synchronous": True}))
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(2,)], 120, 0.5), (
            node.query("SELECT * FROM jobs"), node.log()[-3000:])
        study_uid = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
                        .StudyInstanceUID)
        found = pacs.series_by_modality(study_uid)
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
        (seg_ds,) = fetch(pacs, study_uid, found["SEG"][0])
        assert {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
                for d in seg_ds.SegmentSequence} == {
            "body": "Entire body", "gas": "Gas", "dense": "Substance"}


MR_DIR = CT_DIR.parent / "mr-brain"


def _mr_head_node(node_factory: Any, pacs_port: int) -> Any:
    """A node running mr_head_mask on MR series, SEG + SR + SC to the PACS at ``pacs_port``."""
    sections = ct_body_node_sections(pacs_port)
    sections["pipelines"] = [{"name": "mr-head", "match": {"modality": "MR"},
                              "model": "mr_head_mask", "outputs": ["seg", "sr", "sc"],
                              "destinations": ["PACS"]}]
    return node_factory(**sections).start()


def test_mr_head_mask_results_reach_orthanc_valid_and_aligned(
    tmp_path: Path, node_factory: Any
) -> None:
    """The real sagittal head MR (file order against position) through Orthanc -> node ->
    Orthanc with mr_head_mask: SEG, SR and SC pass dciodvfy, the SEG equals the independent
    computation on every source slice, and the SR reports the volume without Hounsfield units."""
    from tests.support.independent import head_mask, read_series

    require(DCIODVFY)
    http_port, dicom_port = free_port(), free_port()
    node = _mr_head_node(node_factory, dicom_port)
    files = sorted(MR_DIR.glob("*.dcm"))
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        study = pacs.upload(files)
        pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                          "Synchronous": True}))
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(3,)], 120, 0.5), (
            node.query("SELECT * FROM jobs"), node.log()[-3000:])
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        found = pacs.series_by_modality(study_uid)
        (seg_ds,) = fetch(pacs, study_uid, found["SEG"][0])
        (sr_ds,) = fetch(pacs, study_uid, found["SR"][0])
        (sc_ds,) = fetch(pacs, study_uid, (found.get("OT", []) + found.get("SC", []))[0])
    for dataset in (seg_ds, sr_ds, sc_ds):
        assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name
    image, uids = read_series(MR_DIR)
    expected = head_mask(image)
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert np.array_equal(one_segment_mask(seg, uids, "head", "69536005"), expected == 1)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    voxel_ml = float(source.SpacingBetweenSlices if "SpacingBetweenSlices" in source
                     else source.SliceThickness) * float(source.PixelSpacing[0]) * float(
        source.PixelSpacing[1]) / 1000
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    measurements = {m.name.meaning: m for m in group.get_measurements()}
    assert measurements["Volume"].value == pytest.approx(int(expected.sum()) * voxel_ml, rel=2e-3)
    assert all(m.unit.value != "[hnsf'U]" for m in measurements.values())
    assert sc_ds.Modality in ("OT", "MR") and sc_ds.BurnedInAnnotation == "YES"


def test_the_results_of_each_revision_are_told_apart_in_orthanc(
    tmp_path: Path, node_factory: Any
) -> None:
    """Issue 24 §6: the head MR sent with 34 slices, then its 35th (revision 2): Orthanc holds
    two SEG, SR and SC series, each with its Series Date and Time, series numbers that differ
    per revision and a revision 2 description that says so; the node logs the supersession;
    every object still passes dciodvfy."""
    require(DCIODVFY)
    http_port, dicom_port = free_port(), free_port()
    node = _mr_head_node(node_factory, dicom_port)
    files = sorted(MR_DIR.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        for sent, batch in ((3, files[:34]), (6, files[34:])):
            assert storescu(node, *batch).returncode == 0
            assert wait_for(lambda sent=sent: node.query(
                "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(sent,)], 180, 0.5), (
                node.query("SELECT * FROM jobs"), node.log()[-3000:])
        found = pacs.series_by_modality(study_uid)
        results = [dataset for modality in ("SEG", "SR", "OT", "SC")
                   for series in found.get(modality, [])
                   for dataset in fetch(pacs, study_uid, series)]
    assert len(results) == 6
    numbers = sorted(int(d.SeriesNumber) for d in results)
    assert numbers == [9001, 9002, 9003, 9011, 9012, 9013]
    for dataset in results:
        assert dataset.SeriesDate and dataset.SeriesTime, dataset.SOPClassUID.name
        revised = int(dataset.SeriesNumber) > 9010
        assert (" rev 2, not for primary diagnosis" in dataset.SeriesDescription) == revised
        assert dataset.SeriesDescription.endswith(", not for primary diagnosis")
        assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name
    assert len({d.SeriesDescription for d in results}) == 6
    assert "revision 2: its SEG/SR/SC results (series numbers 9011, 9012, 9013) supersede" \
        in node.log()


CXR_DIR = CT_DIR.parent / "cxr"


def test_chest_radiograph_lung_fields_reach_orthanc_valid_and_aligned(
    tmp_path: Path, node_factory: Any
) -> None:
    """The real CR chest PA (MONOCHROME1, JPEG-LS near-lossless, Pixel Spacing 0) through
    Orthanc -> node -> Orthanc with cxr_lung_seg: a single-frame SEG, an SR and an SC that
    pass dciodvfy, reference the one source image, and whose SEG equals the independent
    computation on every pixel; no area is claimed in mm² since the spacing is unknown."""
    from tests.support.independent import lung_fields, read_radiograph

    require(DCIODVFY)
    http_port, dicom_port = free_port(), free_port()
    sections = ct_body_node_sections(dicom_port)
    sections["pipelines"] = [{"name": "cxr-lungs",
                              "match": {"modality": ["CR", "DX"], "body_part": "CHEST"},
                              "model": "cxr_lung_seg", "outputs": ["seg", "sr", "sc"],
                              "destinations": ["PACS"]}]
    node = node_factory(**sections).start()
    source_path = CXR_DIR / "RG1_JLSN.dcm"
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        study = pacs.upload([source_path])
        pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                          "Synchronous": True}))
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(3,)], 120, 0.5), (
            node.query("SELECT * FROM jobs"), node.log()[-3000:])
        source = pydicom.dcmread(source_path, stop_before_pixels=True)
        found = pacs.series_by_modality(str(source.StudyInstanceUID))
        (seg_ds,) = fetch(pacs, str(source.StudyInstanceUID), found["SEG"][0])
        (sr_ds,) = fetch(pacs, str(source.StudyInstanceUID), found["SR"][0])
        (sc_ds,) = fetch(pacs, str(source.StudyInstanceUID),
                         (found.get("OT", []) + found.get("SC", []))[0])
    for dataset in (seg_ds, sr_ds, sc_ds):
        assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name
    image, uid = read_radiograph(source_path)
    expected = lung_fields(image)
    assert 0.15 < expected.mean() < 0.4  # the lung fields, not nothing and not everything
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.NumberOfFrames == 1 and seg.PatientOrientation == source.PatientOrientation
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    (description,) = seg.SegmentSequence
    assert description.SegmentLabel == "lungs"
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid], segment_numbers=[1], ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True)
    assert np.array_equal(masks[0, ..., 0] > 0, expected == 1)
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert uid in str(group.roi.ContentSequence)  # the outline is drawn on the source image
    assert "Area" not in [m.name.meaning for m in group.get_measurements()]
    assert sc_ds.BurnedInAnnotation == "YES"


def films_through_orthanc(tmp_path: Path, http_port: int, dicom_port: int, node: Any,
                          films: dict[str, Path], sent: int) -> dict[str, dict[str, Any]]:
    """Each film uploaded to a real Orthanc and sent on to the node; once ``sent`` results
    have reached Orthanc: per film, its results there by modality (the film's own left out)."""
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        for path in films.values():
            study = pacs.upload([path])
            pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                              "Synchronous": True}))
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(sent,)], 120, 0.5), (
            node.query("SELECT * FROM jobs"), node.log()[-3000:])
        results: dict[str, dict[str, Any]] = {}
        for kind, path in films.items():
            source = pydicom.dcmread(path, stop_before_pixels=True)
            found = pacs.series_by_modality(str(source.StudyInstanceUID))
            results[kind] = {modality: [d for s in series for d in fetch(
                pacs, str(source.StudyInstanceUID), s)] for modality, series in found.items()
                if modality != "CR"}
    return results


def _image_findings(sr_ds: pydicom.Dataset) -> dict[str, dict[str, Any]]:
    """Per TID 1501 group of an SR: finding type -> presence, priority, probability."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    found = {}
    for group in sr.content.get_image_measurement_groups():
        evaluations = {e.name.meaning: e.value.meaning
                       for e in group.get_qualitative_evaluations()}
        # "Finding: Present/Absent" shares its concept name (DCM 121071) with the finding type
        presence = [item.ConceptCodeSequence[0].CodeMeaning for item in group[0].ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == "121071"
                    and item.ConceptCodeSequence[0].CodeMeaning in ("Present", "Absent")]
        measurements = {m.name.meaning: m.value for m in group.get_measurements()}
        found[group.finding_type.meaning] = {**evaluations, **measurements,
                                             "Finding": presence[0]}
    return found


def test_classification_triage_and_rule_out_reports_reach_orthanc(
    tmp_path: Path, node_factory: Any
) -> None:
    """Three chest radiographs (three patients) through Orthanc -> node -> Orthanc with the
    mass classifier (SR only, urgent from p 0.8) and the lung segmentation with
    ``report_negative``: the plain film gets a rule-out SR (mass absent, routine) and the lung
    SEG; the film with a synthetic mass an urgent SR (present, p >= 0.8) sent first; the blank
    film a rule-out SR from the segmentation too (lungs absent). Every SR passes dciodvfy and
    PixelMed's TID 1500 validator and references only its own patient's image."""
    from tests.support.radiographs import radiograph

    require(DCIODVFY)
    http_port, dicom_port = free_port(), free_port()
    sections = ct_body_node_sections(dicom_port)
    sections["pipelines"] = [
        {"name": "cxr-mass", "match": {"modality": "CR"}, "model": "cxr_mass_cls",
         "outputs": ["sr"], "destinations": ["PACS"],
         "urgent_if": [{"finding": "mass", "min_probability": 0.8}]},
        {"name": "cxr-lungs", "match": {"modality": "CR"}, "model": "cxr_lung_seg",
         "outputs": ["seg", "sr"], "destinations": ["PACS"], "report_negative": True},
    ]
    node = node_factory(**sections).start()
    films = {kind: radiograph(tmp_path, kind, f"P-{kind}") for kind in ("plain", "mass", "blank")}
    results = films_through_orthanc(tmp_path, http_port, dicom_port, node, films, sent=8)
    urgent = node.query("SELECT o.priority FROM outbox o JOIN jobs j ON o.job_id = j.id "
                        "WHERE j.pipeline = 'cxr-mass' ORDER BY o.priority DESC")
    assert [p for (p,) in urgent] == [10, 0, 0]
    for kind, objects in results.items():
        source = pydicom.dcmread(films[kind], stop_before_pixels=True)
        for dataset in [*objects.get("SR", []), *objects.get("SEG", [])]:
            assert dataset.PatientID == source.PatientID
            references = dataset.get("CurrentRequestedProcedureEvidenceSequence") or \
                dataset.ReferencedSeriesSequence
            assert str(source.SOPInstanceUID) in str(references)
            assert dciodvfy_errors(dataset, tmp_path) == [], (kind, dataset.SOPClassUID.name)
        for sr_ds in objects["SR"]:
            assert pixelmed_errors(sr_ds, tmp_path) == [], kind
    by_kind = {kind: {name: finding for sr_ds in objects["SR"]
                      for name, finding in _image_findings(sr_ds).items()}
               for kind, objects in results.items()}
    plain, mass, blank = by_kind["plain"], by_kind["mass"], by_kind["blank"]
    assert plain["Mass"]["Finding"] == "Absent" and plain["Mass"]["Priority"] == "Routine"
    assert float(plain["Mass"]["Probability"]) < 0.5
    assert len(results["plain"]["SEG"]) == 1  # the lungs were found: SEG + SR, no rule-out
    assert mass["Mass"]["Finding"] == "Present" and mass["Mass"]["Priority"] == "Urgent"
    assert float(mass["Mass"]["Probability"]) >= 0.8
    assert blank["Lung"]["Finding"] == "Absent" and "Probability" not in blank["Lung"]
    assert "SEG" not in results["blank"]


def test_heatmap_gives_fractional_seg_sc_and_sr_or_a_rule_out(
    tmp_path: Path, node_factory: Any
) -> None:
    """The heatmap output kind, end to end with cxr_mass_map: the film with a synthetic mass
    gets a FRACTIONAL (PROBABILITY) SEG whose stored map equals the independent computation
    (tests/independent.py ``mass_map``) to within one step of 1/255 on every pixel, a burned-in
    SC and an urgent findings SR (present, probability >= 0.9), sent first; the plain film only a
    rule-out SR (absent, routine). All pass dciodvfy, the SRs also PixelMed's validator."""
    from tests.support.independent import mass_map, read_radiograph
    from tests.support.radiographs import radiograph

    require(DCIODVFY)
    http_port, dicom_port = free_port(), free_port()
    sections = ct_body_node_sections(dicom_port)
    sections["pipelines"] = [
        {"name": "cxr-map", "match": {"modality": "CR"}, "model": "cxr_mass_map",
         "outputs": ["seg", "sr", "sc"], "destinations": ["PACS"],
         "urgent_if": [{"finding": "mass", "min_probability": 0.8}]},
    ]
    node = node_factory(**sections).start()
    films = {kind: radiograph(tmp_path, kind, f"P-{kind}") for kind in ("plain", "mass")}
    results = films_through_orthanc(tmp_path, http_port, dicom_port, node, films, sent=4)
    priorities = node.query("SELECT priority, kind FROM outbox ORDER BY priority DESC, kind")
    assert priorities == [(10, "sc"), (10, "seg"), (10, "sr"), (0, "sr")]
    assert set(results["plain"]) == {"SR"} and len(results["plain"]["SR"]) == 1
    for kind, objects in results.items():
        source = pydicom.dcmread(films[kind], stop_before_pixels=True)
        for dataset in (d for datasets in objects.values() for d in datasets):
            assert dataset.PatientID == source.PatientID
            # where a person reads it: the model, its version, not for primary diagnosis
            assert dataset.SeriesDescription.startswith("AI cxr_mass_map 1.0.0 ")
            assert dataset.SeriesDescription.endswith(", not for primary diagnosis")
            assert dciodvfy_errors(dataset, tmp_path) == [], (kind, dataset.SOPClassUID.name)
        (sr_ds,) = objects["SR"]
        assert pixelmed_errors(sr_ds, tmp_path) == [], kind
    plain = _image_findings(results["plain"]["SR"][0])["Mass"]
    assert plain["Finding"] == "Absent" and plain["Priority"] == "Routine"
    assert float(plain["Probability"]) < 0.5
    mass = _image_findings(results["mass"]["SR"][0])["Mass"]
    assert mass["Finding"] == "Present" and mass["Priority"] == "Urgent"
    assert float(mass["Probability"]) >= 0.9
    image, uid = read_radiograph(films["mass"])
    expected = np.round(mass_map(image) * 255)
    (seg_ds,) = results["mass"]["SEG"]
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == 255 and seg.NumberOfFrames == 1
    (description,) = seg.SegmentSequence
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    stored = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid], segment_numbers=[1], ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True, rescale_fractional=False)[0, ..., 0]
    assert stored.shape == expected.shape
    assert np.abs(stored.astype(np.int16) - expected).max() <= 1
    assert expected.max() >= 250 and (expected >= 128).sum() > 5000  # a mass, not a speck
    (sc_ds,) = results["mass"].get("OT", []) + results["mass"].get("SC", [])
    assert sc_ds.BurnedInAnnotation == "YES"
    rows, cols = np.nonzero(expected >= 128)
    centre = sc_ds.pixel_array[int(rows.mean()), int(cols.mean())].astype(int)
    assert centre[0] > centre[2] + 60  # the mass drawn in its colour (red-orange) on grey

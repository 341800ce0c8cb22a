"""The life of a result in the PACS (README: *Managing models and results*), against Orthanc:

- a revision of a series (one more slice arrives after completion) gives new results, and
  the PACS then gets an IHE IOCM rejection note for the stale ones: a Key Object Selection
  whose Document Title is (113001, DCM, "Rejected for Quality Reasons"), that passes dciodvfy
  and references exactly the first revision's SEG, SR and SC, sent after the new objects;
- an operator withdraws the new results with ``ainode results withdraw``: one note, (113037,
  DCM, "Rejected for Patient Safety Reasons"), sent once, also across a restart of the node;
  withdrawing again is refused; a destination with ``iocm: false`` is never sent notes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from tests.support.dicom_checks import DCIODVFY, dciodvfy_errors, fetch
from tests.support.environment import CT_DIR, ROOT, free_port, require, wait_for
from tests.support.node import ct_body_node_sections, http_call, storescu
from tests.support.orthanc import start_orthanc

pytestmark = pytest.mark.integration
MR_DIR = CT_DIR.parent / "mr-brain"
AINODE = str(Path(sys.executable).parent / "ainode")


def readme_peer() -> dict[str, Any]:
    """The README's peer with ``iocm: true``, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**Withdrawing results (IHE IOCM).**", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (peer,) = yaml.safe_load(snippet)["peers"]
    return dict(peer)


def referenced(note: pydicom.Dataset) -> set[str]:
    """The SOP Instance UIDs a Key Object Selection references (its evidence)."""
    return {str(instance.ReferencedSOPInstanceUID)
            for study in note.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence}


def notes_in(pacs: Any, study_uid: str) -> list[pydicom.Dataset]:
    return [d for series in pacs.series_by_modality(study_uid).get("KO", [])
            for d in fetch(pacs, study_uid, series)]


def copy_as_new_series(files: list[Path], folder: Path) -> list[Path]:
    """The same images as another series of the same study (new series and SOP UIDs)."""
    folder.mkdir()
    series_uid = generate_uid()
    paths = []
    for index, source in enumerate(files):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SeriesNumber = 901
        paths.append(folder / f"{index:03d}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def sent(node: Any, kind: str | None = None) -> list[tuple[Any, ...]]:
    where = "state='sent'" + (f" AND kind='{kind}'" if kind else "")
    return node.query(f"SELECT id, job_id, destination, sop_instance_uid, attempts, updated_at,"
                      f" kind FROM outbox WHERE {where} ORDER BY id")


def test_a_revision_rejects_the_stale_results_and_an_operator_withdraws_once(
    tmp_path: Path, node_factory: Any,
) -> None:
    require(DCIODVFY)
    http_port, pacs_port = free_port(), free_port()
    sections = ct_body_node_sections(pacs_port)
    sections["peers"][0] = {**readme_peer(), "ae_title": "ORTHANC", "host": "127.0.0.1",
                            "port": pacs_port}
    assert sections["peers"][0]["iocm"] is True
    sections["peers"].append({"name": "OLDPACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                              "port": pacs_port, "results": ["seg"]})  # iocm: false
    sections["pipelines"] = [{"name": "mr-head", "match": {"modality": "MR"},
                              "model": "mr_head_mask", "outputs": ["seg", "sr", "sc"],
                              "destinations": ["PACS", "OLDPACS"]}]
    node = node_factory(**sections).start()
    files = sorted(MR_DIR.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with start_orthanc(tmp_path, http_port, pacs_port, node.port) as pacs:
        # revision 1: all slices but one
        assert storescu(node, *files[:-1]).returncode == 0
        assert wait_for(lambda: len(sent(node)) == 4, 120, 0.3), node.log()[-3000:]
        first = {row[3] for row in sent(node) if row[2] == "PACS"}
        (first_job,) = {row[1] for row in sent(node)}
        # revision 2: the last slice arrives after completion
        assert storescu(node, files[-1]).returncode == 0
        assert wait_for(lambda: len(sent(node, "kos")) == 1, 120, 0.3), (
            node.query("SELECT * FROM rejections"), node.log()[-3000:])
        rows = sent(node)
        (note_row,) = [r for r in rows if r[6] == "kos"]
        second_job = max(r[1] for r in rows)
        new_objects = [r for r in rows if r[1] == second_job and r[2] == "PACS"
                       and r[6] != "kos"]
        assert len(new_objects) == 3 and {r[3] for r in new_objects}.isdisjoint(first)
        assert note_row[2] == "PACS" and note_row[1] == first_job  # OLDPACS: iocm false
        assert note_row[5] >= max(r[5] for r in new_objects), "the note went first"
        (note,) = notes_in(pacs, study_uid)
        assert dciodvfy_errors(note, tmp_path) == []
        title = note.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
        assert referenced(note) == first
        assert str(note.StudyInstanceUID) == study_uid

        # the operator withdraws the new results, while the node runs
        withdrawn = subprocess.run(
            [AINODE, "results", "withdraw", str(second_job), "--reason", "wrong side",
             "--config", str(node.config_path)], capture_output=True, text=True, timeout=60)
        assert withdrawn.returncode == 0, withdrawn.stdout + withdrawn.stderr
        assert wait_for(lambda: len(sent(node, "kos")) == 2, 60, 0.3), node.log()[-3000:]
        again = subprocess.run(
            [AINODE, "results", "withdraw", str(second_job), "--reason", "wrong side",
             "--config", str(node.config_path)], capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "withdrawn already" in again.stdout + again.stderr
        safety = [n for n in notes_in(pacs, study_uid)
                  if n.ConceptNameCodeSequence[0].CodeValue == "113037"]
        assert len(safety) == 1 and referenced(safety[0]) == {r[3] for r in new_objects}
        assert dciodvfy_errors(safety[0], tmp_path) == []
        assert "wrong side" not in node.log()  # the reason is kept, not logged

        # a restart, then more work through the same sender: no note goes again
        node.stop()
        node.start()
        other = copy_as_new_series(files, tmp_path / "other")
        assert storescu(node, *other).returncode == 0
        assert wait_for(lambda: len(sent(node)) == len(rows) + 1 + 4, 120, 0.3), (
            node.query("SELECT id, kind, state, attempts FROM outbox"), node.log()[-3000:])
        notes = sent(node, "kos")
        assert len(notes) == 2 and all(row[4] == 1 for row in notes), notes
        assert len(notes_in(pacs, study_uid)) == 2
        audit = node.query("SELECT actor, detail FROM audit WHERE action='result withdrawn'")
        assert [detail for _, detail in audit] == [
            f"job {first_job}: superseded by job {second_job}",
            f"job {second_job}: rejected for patient safety reasons"], audit
        listing = subprocess.run([AINODE, "results", "list", "--config", str(node.config_path)],
                                 capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and "OLDPACS" in listing.stdout, listing.stdout
    assert json.loads(json.dumps(audit))  # plain values


def pacs_rejection_note(seg: pydicom.Dataset, folder: Path) -> Path:
    """What a PACS sends when its user rejects a result: a KOS titled (113037, DCM,
    "Rejected for Patient Safety Reasons") referencing it, made here with highdicom."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    content = hd.ko.KeyObjectSelection(
        document_title=Code("113037", "DCM", "Rejected for Patient Safety Reasons"),
        referenced_objects=[seg])
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=[seg], content=content, series_instance_uid=generate_uid(), series_number=77,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="a PACS")
    path = folder / "rejection.dcm"
    note.save_as(path, enforce_file_format=True)
    return path


def test_verdicts_from_the_api_and_a_pacs_rejection_note_make_the_acceptance_rate(
    tmp_path: Path, node_factory: Any,
) -> None:
    http_port, pacs_port = free_port(), free_port()
    sections = ct_body_node_sections(pacs_port)
    sections["pipelines"] = [{"name": "mr-head", "match": {"modality": "MR"},
                              "model": "mr_head_mask", "outputs": ["seg", "sr"],
                              "destinations": ["PACS"]}]
    node = node_factory(**sections).start()
    files = sorted(MR_DIR.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with start_orthanc(tmp_path, http_port, pacs_port, node.port) as pacs:
        assert storescu(node, *files).returncode == 0
        assert wait_for(lambda: len(sent(node)) == 2, 120, 0.3), node.log()[-3000:]
        (job,) = {row[1] for row in sent(node)}
        status, answer = http_call(node.http_port, f"/api/jobs/{job}/verdict",
                                   {"verdict": "accept", "reason": "as I read it"})
        assert status == 200, answer
        assert len(pacs.series_by_modality(study_uid)["SEG"]) == 1
    (result,) = node.query("SELECT result FROM jobs WHERE id=?", job)
    seg = pydicom.dcmread(Path(json.loads(result[0])["result_dir"]) / "seg.dcm")
    seg.PatientName = f"{seg.PatientName}^"  # highdicom wants a name with components
    status, report = http_call(node.http_port, "/api/verdicts")
    assert report["acceptance"] == [{"model": "mr_head_mask", "version": "1.0.0",
                                     "assessed": 1, "accept": 1, "reject": 0, "modify": 0,
                                     "acceptance_rate": 1.0}]
    # the radiologist rejects it in the PACS, which sends the node its rejection note
    note = pacs_rejection_note(seg, tmp_path)
    assert storescu(node, note).returncode == 0
    assert wait_for(lambda: node.query("SELECT route_state FROM series WHERE modality='KO'")
                    == [("assessed",)], 60, 0.3), node.log()[-3000:]
    status, report = http_call(node.http_port, "/api/verdicts")
    (acceptance,) = report["acceptance"]
    assert (acceptance["assessed"], acceptance["reject"], acceptance["acceptance_rate"]) == (
        1, 1, 0.0)
    latest = report["verdicts"][0]
    assert (latest["verdict"], latest["source"], latest["by"]) == ("reject", "pacs", "STORESCU")
    assert "Rejected for Patient Safety Reasons" in latest["reason"]
    status, metrics = http_call(node.http_port, "/metrics")
    for verdict in ("accept", "reject"):
        line = (f'ainode_results_assessed_total{{model="mr_head_mask",verdict="{verdict}",'
                f'version="1.0.0"}} 1.0')
        assert line in metrics, [m for m in metrics.splitlines() if "assessed" in m]
    # the same note again is not a second verdict
    assert storescu(node, note).returncode == 0
    assert node.query("SELECT COUNT(*) FROM verdicts") == [(2,)]


def text_values(item: pydicom.Dataset) -> list[str]:
    """Every TEXT content item's value, anywhere in an SR's content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found.extend(text_values(child))
    return found


def test_a_job_records_what_made_it_and_replays_to_identical_objects(
    tmp_path: Path, node_factory: Any,
) -> None:
    sections = ct_body_node_sections(free_port())
    sections["pipelines"] = [{"name": "mr-head", "match": {"modality": "MR"},
                              "model": "mr_head_mask", "outputs": ["seg", "sr", "sc"]}]
    node = node_factory(**sections).start()
    files = sorted(MR_DIR.glob("*.dcm"))
    assert storescu(node, *files).returncode == 0
    assert wait_for(lambda: node.query("SELECT COUNT(*) FROM jobs WHERE state='done'")
                    == [(1,)], 120, 0.3), node.log()[-3000:]
    ((job, result),) = node.query("SELECT id, result FROM jobs")
    made = json.loads(result)["provenance"]
    assert (made["model"], made["version"], made["repository_version"], made["backend"],
            made["inputs"]) == ("mr_head_mask", "1.0.0", 1, "embedded", 35)
    assert all(len(made[k]) == 64 for k in ("model_sha256", "pipeline_sha256",
                                            "inputs_sha256"))
    folder = Path(json.loads(result)["result_dir"])
    recorded = json.loads((folder / "provenance.json").read_text())
    assert len(recorded["input_files"]) == 35
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert f"model_sha256={made['model_sha256']}" in text_values(sr)  # TID 4019
    seg = pydicom.dcmread(folder / "seg.dcm")
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0] \
        .AlgorithmParameters == f"model_sha256={made['model_sha256']}"

    replayed = subprocess.run([AINODE, "replay", str(job), "--config", str(node.config_path)],
                              capture_output=True, text=True, timeout=300)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "every output object is identical" in replayed.stdout
    # a delivered object that no longer matches what the model makes is found out
    seg.SegmentSequence[0].SegmentLabel = "something else"
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    replayed = subprocess.run([AINODE, "replay", str(job), "--config", str(node.config_path)],
                              capture_output=True, text=True, timeout=300)
    assert replayed.returncode == 1 and "SegmentLabel" in replayed.stdout, replayed.stdout

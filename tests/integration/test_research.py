"""Research export against real peers: the node's studies (the shared CT with the node's own
SEG and SR, the head MR, the compressed and reference files) de-identified to a folder,
checked by an independent reading of PS3.15 Table E.1-1 (tests/deid_check.py), by dciodvfy,
and byte for byte; to Orthanc by C-STORE and by STOW-RS; refusals and a missing key."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.encaps import generate_fragments
from pydicom.uid import generate_uid

from tests.support.deid_check import (
    identifying_values,
    leaks,
    private_tags,
    searched,
    unlisted_values,
)
from tests.support.environment import DATA, ct_files, free_port, require, wait_for
from tests.support.node import ct_body_node_sections, ct_body_pipeline, send_raw, storescu
from tests.support.orthanc import Orthanc, start_orthanc

# the shared files are real-world: some values break their VR's rules (pydicom warns)
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning:pydicom")]
DCIODVFY = "/usr/bin/dciodvfy"
MR_DIR = DATA / "mr-brain"
KEY = "research project key: 32 bytes!!"
OTHER_KEY = "another project's key, 32 bytes!"
LONGITUDINAL = ("retain_longitudinal_modified_dates", "retain_patient_characteristics",
                "clean_descriptors", "clean_structured_content")


def ainode(node: Any, *arguments: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "ainode"), *arguments, "--config",
               str(node.config_path)]
    environment = {k: v for k, v in os.environ.items() if k != "AINODE_DEID_KEY"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**environment, "COLUMNS": "400", **(env or {})})


def dciodvfy_errors(path: Path) -> set[str]:
    """Its Error lines, UIDs blanked (the export's UIDs differ from the source's)."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return {re.sub(r"UID \S+$", "UID <uid>", re.sub(r"\b\d+(\.\d+){2,}\b", "<uid>", line))
            for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


def exported_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def pixel_key(dataset: pydicom.Dataset) -> tuple[str, str] | None:
    """The pixel data as written: a value of odd length (two shared files have one, against
    PS3.5 7.1.1 and A.4) gets the padding byte every writer must add, at its end or at its
    last fragment's (compressed); compared with the fragments' bytes unwrapped."""
    if "PixelData" not in dataset:
        return None
    pixels = bytes(dataset.PixelData)
    if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        fragments = [f + b"\0" * (len(f) % 2) for f in generate_fragments(
            pixels[8 + int.from_bytes(pixels[4:8], "little"):])]
        pixels = b"".join(fragments)
    elif len(pixels) % 2:
        pixels += b"\0"
    return str(dataset.SOPClassUID), hashlib.sha256(pixels).hexdigest()


def match_key(dataset: pydicom.Dataset) -> tuple[str, ...] | None:
    """What pairs an exported file with its source without the export's code: the pixel
    data, else (an SR) the SOP class, series and instance numbers and document title."""
    pixels = pixel_key(dataset)
    if pixels is not None:
        return pixels
    title = dataset.get("ConceptNameCodeSequence")
    return (str(dataset.SOPClassUID), str(dataset.get("SeriesNumber")),
            str(dataset.get("InstanceNumber")), str(title[0].CodeValue) if title else "")


def burned_in_copy(tmp_path: Path) -> Path:
    """One MR slice as a study of its own whose Burned In Annotation says YES."""
    dataset = pydicom.dcmread(sorted(MR_DIR.glob("*.dcm"))[0])
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.BurnedInAnnotation = "YES"
    path = tmp_path / "burned-in.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_export_to_a_folder_leaves_nothing_identifying_and_keeps_references_and_pixels(
        tmp_path: Path, node_factory: Any) -> None:
    require(DCIODVFY)
    key_file = tmp_path / "auto.key"
    key_file.write_text(KEY)
    other_key = tmp_path / "other.key"
    other_key.write_text(OTHER_KEY)
    folders = {name: tmp_path / name for name in ("auto", "cohort", "again", "other")}
    research = [
        {"name": "auto", "path": str(folders["auto"]), "profile": "longitudinal",
         "include_results": True, "key_file": str(key_file)},
        {"name": "cohort", "path": str(folders["cohort"]), "profile": "longitudinal",
         "include_results": True, "crosswalk": True},
        {"name": "again", "path": str(folders["again"]), "profile": "longitudinal",
         "include_results": True},
        {"name": "other", "path": str(folders["other"]), "profile": "longitudinal",
         "include_results": True, "key_file": str(other_key)},
    ]
    sections = ct_body_node_sections(free_port())
    pipeline = {**ct_body_pipeline(), "destinations": [],
                "outputs": ["seg", "sr", "sc", "research"], "research": "auto"}
    node = node_factory(**{**sections, "pipelines": [pipeline], "research": research}).start()

    assert storescu(node, *ct_files()).returncode == 0
    assert storescu(node, *sorted(MR_DIR.glob("*.dcm"))).returncode == 0
    others = [p for d in ("compressed", "reference") for p in sorted((DATA / d).rglob("*"))
              if p.is_file() and p.suffix.lower() not in (".txt", ".md", ".json", ".jpeg")
              and "LICENSE" not in p.name]
    accepted = [p for p in others if (status := send_raw(node, p)) is not None
                and status.Status in (0, 0xB000, 0xB007, 0xB006)]
    assert len(accepted) >= 60, len(accepted)
    burned_in = burned_in_copy(tmp_path)
    assert storescu(node, burned_in).returncode == 0

    # the pipeline's research output: the CT and its SEG and SR, once its job is done
    assert wait_for(lambda: node.query(
        "SELECT state FROM outbox WHERE kind='research'") == [("sent",)], 240, 0.5), \
        (node.query("SELECT state, error FROM outbox"), node.log()[-3000:])
    automatic = exported_files(folders["auto"])
    assert len(automatic) == 134 + 2  # CT + SEG + SR (the SC, burned in, stays behind)

    studies = sorted({str(r[0]) for r in node.query("SELECT study_uid FROM instances")})
    burned_study = str(pydicom.dcmread(burned_in, stop_before_pixels=True).StudyInstanceUID)

    # without a key: a clear error before anything is written
    refused = ainode(node, "export", *studies, "--to", "cohort")
    assert refused.returncode == 2 and "AINODE_DEID_KEY" in refused.stderr, refused.stderr
    assert not folders["cohort"].exists()

    exported = ainode(node, "export", *studies, "--to", "cohort", env={"AINODE_DEID_KEY": KEY})
    assert exported.returncode == 1, exported.stdout + exported.stderr  # one study refused
    assert f"{burned_study}: refused" in exported.stderr
    assert "Burned In Annotation is YES" in exported.stderr
    files = exported_files(folders["cohort"])
    sources = [Path(str(r[0])) for r in node.query(
        "SELECT path FROM instances WHERE study_uid != ?", burned_study)]
    results = sorted((node.data_dir / "results").rglob("*.dcm"))
    assert len(files) == len(sources) + 2, (len(files), len(sources))
    assert "sc result of study" in exported.stdout

    # the pipeline's automatic export and the operator's agree byte for byte (same key)
    cohort = {p.relative_to(folders["cohort"]): p.read_bytes() for p in files}
    for path in automatic:
        assert cohort[path.relative_to(folders["auto"])] == path.read_bytes()

    # nothing identifying left, private attributes gone, pixel data unchanged
    by_pixels: collections.Counter[Any] = collections.Counter()
    originals: set[str] = set()
    kept: set[str] = set()
    for source in [*sources, *(r for r in results if r.stem != "sc")]:
        dataset = pydicom.dcmread(source)
        originals |= identifying_values(dataset, LONGITUDINAL)
        kept |= unlisted_values(dataset)
        by_pixels[pixel_key(dataset)] += 1
    exported_pixels: collections.Counter[Any] = collections.Counter()
    for path in files:
        dataset = pydicom.dcmread(path)
        assert not private_tags(dataset), path
        assert dataset.PatientIdentityRemoved == "YES"
        exported_pixels[pixel_key(dataset)] += 1
    assert exported_pixels == by_pixels, (exported_pixels - by_pixels, by_pixels - exported_pixels)
    looked_for = searched(originals, kept)
    assert len(looked_for) > 300  # names, IDs, UIDs, dates, institutions of ~260 files
    found = {path.name: leaked for path in files if (leaked := leaks(path, looked_for))}
    assert not found, list(found.items())[:5]
    mr = pydicom.dcmread(sorted(MR_DIR.glob("*.dcm"))[0])
    head = next(d for p in files if pixel_key(d := pydicom.dcmread(p)) == pixel_key(mr))
    assert "PatientBirthDate" not in head or not head.PatientBirthDate
    assert head.get("InstitutionName") != mr.InstitutionName
    assert head.get("DeviceSerialNumber") != mr.DeviceSerialNumber
    assert head.StudyDate != mr.StudyDate and len(head.StudyDate) == 8  # shifted, kept
    assert head.PatientSex == mr.PatientSex  # retain patient characteristics

    # the node's SEG and SR reference the exported CT
    exported_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                     for p in files}
    by_modality = {str(d.Modality): d for d in map(pydicom.dcmread, automatic)}
    seg, sr = by_modality["SEG"], by_modality["SR"]
    seg_refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                for i in s.ReferencedInstanceSequence}
    assert len(seg_refs) == 134 and seg_refs <= exported_uids
    evidence = {str(i.ReferencedSOPInstanceUID)
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence <= exported_uids and str(seg.SOPInstanceUID) in evidence
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == pydicom.dcmread(
        automatic[0], stop_before_pixels=True).StudyInstanceUID

    # dciodvfy: no Error line the source did not have already
    source_by_key: dict[Any, list[Path]] = collections.defaultdict(list)
    for source in [*sources, *(r for r in results if r.stem != "sc")]:
        source_by_key[match_key(pydicom.dcmread(source))].append(source)
    with ThreadPoolExecutor(4) as pool:
        def new_errors(path: Path) -> list[str]:
            dataset = pydicom.dcmread(path)
            # two shared files can hold the same pixels: what either had is not new
            before = set().union(*map(dciodvfy_errors, source_by_key[match_key(dataset)]))
            return sorted(dciodvfy_errors(path) - before)

        checked = dict(zip(files, pool.map(new_errors, files), strict=True))
    worse = {p.name: e for p, e in checked.items() if e}
    assert not worse, "\n".join(f"{name}: {errors}" for name, errors in worse.items())

    # same key again: identical; another key: no pseudonym shared
    again = ainode(node, "export", *studies, "--to", "again", env={"AINODE_DEID_KEY": KEY})
    assert again.returncode == 1
    assert {p.relative_to(folders["again"]): p.read_bytes()
            for p in exported_files(folders["again"])} == cohort
    other = ainode(node, "export", *studies, "--to", "other")
    assert other.returncode == 1
    ours = {part for p in files for part in p.relative_to(folders["cohort"]).parts}
    theirs = {part for p in exported_files(folders["other"])
              for part in p.relative_to(folders["other"]).parts}
    assert ours and theirs and not ours & theirs

    # the crosswalk (on for cohort) re-identifies, audited; the audit has the exports
    pseudonym = next(line.split(" -> ")[1] for line in exported.stdout.splitlines()
                     if " -> " in line)
    looked_up = ainode(node, "reidentify", "cohort", pseudonym.strip())
    assert looked_up.returncode == 0 and "study: " in looked_up.stdout
    assert ainode(node, "reidentify", "again", pseudonym.strip()).returncode == 1
    actions = [r[0] for r in node.query("SELECT action FROM audit")]
    assert actions.count("research export") >= 4 and "re-identification" in actions


def test_export_to_orthanc_by_c_store_and_by_stow_rs(tmp_path: Path, node_factory: Any) -> None:
    http_port, dicom_port = free_port(), free_port()
    research_peers = [
        {"name": "RESEARCH", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port},
        {"name": "RESEARCH-WEB", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port,
         "dicomweb_url": f"http://127.0.0.1:{http_port}/dicom-web"},
        {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1", "port": 11113},
    ]
    node = node_factory(
        peers=research_peers,
        research=[{"name": "dimse", "peer": "RESEARCH"},
                  {"name": "web", "peer": "RESEARCH-WEB", "profile": "longitudinal"}]).start()
    mr_files = sorted(MR_DIR.glob("*.dcm"))
    assert storescu(node, *mr_files).returncode == 0
    mr = pydicom.dcmread(mr_files[0], stop_before_pixels=True)
    study = str(mr.StudyInstanceUID)
    assert wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(35,)], 30)
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        for name in ("dimse", "web"):
            done = ainode(node, "export", study, "--to", name, env={"AINODE_DEID_KEY": KEY})
            assert done.returncode == 0, done.stdout + done.stderr
            pseudonym = done.stdout.split(" -> ")[1].split()[0]
            held = held_studies(pacs)
            assert list(held) == [pseudonym], held
            (patient_id, instances), = held.values()
            assert patient_id.startswith("ANON-") and patient_id != mr.PatientID
            assert instances == 35
            assert study not in str(pacs.api("/tools/find", '{"Level": "Study", "Query": {}, '
                                                          '"Expand": true}'))
            for orthanc_id in pacs.api("/studies"):
                pacs.api(f"/studies/{orthanc_id}", method="DELETE")


def held_studies(pacs: Orthanc) -> dict[str, tuple[str, int]]:
    """Study Instance UID -> (Patient ID, instance count) as Orthanc holds them."""
    held = {}
    for orthanc_id in pacs.api("/studies"):
        study = pacs.api(f"/studies/{orthanc_id}")
        count = len(pacs.api(f"/studies/{orthanc_id}/instances"))
        held[study["MainDicomTags"]["StudyInstanceUID"]] = (
            study["PatientMainDicomTags"]["PatientID"], count)
    return held


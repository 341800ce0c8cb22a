"""Seeded fault trials: the whole node (supervisor and every role process) is SIGKILLed at a
random point of ingest, inference, encoding or egress, started again, and the modality sends
again what was not acknowledged, as a modality does. Each trial then asserts: every
acknowledged instance is in the spool, element for element as sent; every job ended done,
or failed with a reason, or superseded by a newer revision; and the PACS (a real Orthanc)
holds exactly one copy of each result.

4 trials under CI (``CI`` set: ``make test`` there; one per phase), 3 otherwise, and as many
as ``FAULT_TRIALS`` says when set (docs/reliability.md quotes a run of 20); the seed makes each
trial's kill point the same on every run."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support.environment import ROOT, STORESCU, ct_files, free_port, require, wait_for
from tests.support.node import storescu_acknowledged
from tests.support.orthanc import start_orthanc
from tests.support.radiographs import radiograph

pytestmark = pytest.mark.integration

SEED = 1129
TRIALS = int(os.environ.get("FAULT_TRIALS") or (4 if os.environ.get("CI") else 3))
# a job ends done, failed (with its reason) or superseded (a film sent again after the kill
# opened a new revision of its series, whose job replaces it)
ENDED = ("done", "failed", "superseded")
PHASES = ("ingest", "inference", "encoding", "egress")
PIPELINES = [
    {"name": "cxr-lungs", "match": {"modality": ["CR", "DX"], "body_part": "CHEST"},
     "model": "cxr_lung_seg", "outputs": ["seg", "sr", "sc"], "destinations": ["PACS"]},
    {"name": "cxr-mass", "match": {"modality": ["CR", "DX"], "body_part": "CHEST"},
     "model": "cxr_mass_cls", "outputs": ["sr"], "destinations": ["PACS"]},
]


@dataclass
class Trial:
    number: int
    phase: str
    delay_s: float
    files: list[Path]
    acknowledged: dict[str, Path] = field(default_factory=dict)  # SOP UID -> file sent

    def send(self, node: Any, kill_after: int | None = None) -> None:
        """storescu every file not acknowledged yet (as a PACS retries what failed); with
        ``kill_after``, SIGKILL the node after that many acknowledgements."""
        done = set(self.acknowledged.values())
        waiting = [f for f in self.files if f not in done]
        if not waiting:
            return
        for current in storescu_acknowledged(node, waiting):
            uid = str(pydicom.dcmread(current, stop_before_pixels=True).SOPInstanceUID)
            self.acknowledged[uid] = current
            if kill_after is not None and len(self.acknowledged) >= kill_after:
                node.kill()
                kill_after = None


def _kill_during(node: Any, trial: Trial) -> bool:
    """Wait for the trial's phase, then its random delay, then SIGKILL; ``False`` when the
    phase had passed (the kill then lands in the next one)."""
    if trial.phase in ("inference", "encoding"):
        reached = wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM jobs WHERE state='running'")[0][0] > 0, 60, 0.02)
    else:  # egress: results queued for the PACS
        reached = wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox")[0][0] > 0, 60, 0.02)
    time.sleep(trial.delay_s)
    node.kill()
    return bool(reached)


def _settled(node: Any) -> bool:
    jobs = node.query("SELECT state FROM jobs")
    return (bool(jobs) and all(state in ENDED for (state,) in jobs)
            and node.query("SELECT COUNT(*) FROM outbox WHERE state='queued'") == [(0,)]
            and node.query("SELECT COUNT(*) FROM series WHERE route_state IS NULL") == [(0,)])


def _check(node: Any, trial: Trial, pacs: Any, studies: list[str]) -> int:
    """The trial's assertions; returns how many result copies the PACS holds."""
    stored = {}
    for path in node.stored_files():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid not in stored, f"trial {trial.number}: {uid} stored twice"
        stored[uid] = path
    for uid, sent in trial.acknowledged.items():
        assert uid in stored, f"trial {trial.number}: acknowledged {uid} lost"
        # element for element: dcmtk re-encodes undefined-length sequences on the wire, so
        # the bytes it sent are not the file's (the node keeps what it received as received)
        assert pydicom.dcmread(stored[uid]) == pydicom.dcmread(sent), (
            f"trial {trial.number}: acknowledged {uid} changed")
    for state, error in node.query("SELECT state, error FROM jobs"):
        assert state == "done" or (state in ENDED and error), (trial.number, state, error)
    copies = 0
    for study in studies:
        queued = {uid for (uid,) in node.query(
            "SELECT o.sop_instance_uid FROM outbox o JOIN jobs j ON j.id=o.job_id"
            " JOIN series s ON s.series_uid=j.series_uid AND s.revision=j.revision"
            " WHERE s.study_uid=?", study)}
        found = pacs.api("/tools/find", f'{{"Level": "Instance", "Query": '
                         f'{{"StudyInstanceUID": "{study}"}}, "Expand": true}}')
        in_pacs = [i["MainDicomTags"]["SOPInstanceUID"] for i in found]
        assert sorted(in_pacs) == sorted(queued), (trial.number, in_pacs, queued)
        copies += len(in_pacs)
    return copies


def _new_study(base: Path, target: Path, number: int) -> Path:
    """``base`` as a new patient's study: new UIDs, the trial's patient ID."""
    dataset = pydicom.dcmread(base)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.PatientID = f"TRIAL{number}-{base.stem}"
    dataset.save_as(target, enforce_file_format=True)
    return target


def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, node_factory: Any) -> None:
    require(STORESCU)
    rng = random.Random(SEED)
    http_port, pacs_port = free_port(), free_port()
    ct = ct_files()[:10]  # no pipeline takes them: ingest volume around the films
    summary: list[tuple[int, str, int, int]] = []
    bases = [radiograph(tmp_path, kind, "TRIAL") for kind in ("mass", "plain")]
    with start_orthanc(tmp_path, http_port, pacs_port, free_port()) as pacs:
        for number in range(TRIALS):
            phase = PHASES[number % len(PHASES)]
            films = [_new_study(base, tmp_path / f"trial{number}-{base.name}", number)
                     for base in bases]
            trial = Trial(number, phase, rng.uniform(0, 0.8), [films[0], *ct, films[1]])
            studies = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                       for f in films]
            node = node_factory(
                peers=[{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                        "port": pacs_port},
                       {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                        "port": 11113}],
                series={"quiet_seconds": 1, "sweep_interval_s": 0.2},
                inference={"model_repository": str(ROOT / "model_repository"), "workers": 1},
                egress={"retry_s": 0.5, "max_retry_s": 1, "interval_s": 0.3},
                pipelines=PIPELINES).start()
            if phase == "ingest":
                trial.send(node, kill_after=rng.randint(1, len(trial.files) - 1))
            else:
                trial.send(node)
                _kill_during(node, trial)
            assert not node.alive
            node.start()
            trial.send(node)  # what was not acknowledged is sent again
            assert wait_for(lambda n=node: _settled(n), 180, 0.3), (
                number, phase, node.query("SELECT * FROM jobs"),
                node.query("SELECT * FROM outbox"), node.log()[-3000:])
            copies = _check(node, trial, pacs, studies)
            assert copies >= 4 * len(films) - 4, (number, copies)  # failures must be rare
            summary.append((number, phase, len(trial.acknowledged), copies))
            node.stop()
    print("\nfault trials (trial, phase, acknowledged, results in PACS):", summary)
    assert len(summary) == TRIALS

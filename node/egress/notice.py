"""What a notification announces: one result's study, patient, pipeline, model and findings,
read from the job store and the result's own header (the clinical channel carries the patient;
logs never do)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pydicom

from node.domain import Finding, Findings
from node.store.jobs import JobStore
from node.store.outbox import OutboxItem
from node.store.queue import JobQueue

NOTICE = "not for primary diagnosis"


@dataclass(frozen=True)
class Notice:
    """One result to announce."""

    item_id: int
    urgent: bool
    study_uid: str
    series_uid: str
    accession: str
    patient_id: str
    patient_name: str
    pipeline: str
    model: str
    model_version: str
    findings: Findings
    report_uid: str
    issued: dt.datetime

    @property
    def summary(self) -> str:
        present = [name for name, finding in self.findings.items() if finding.present]
        found = ", ".join(present) if present else "nothing found"
        return (f"{'URGENT: ' if self.urgent else ''}{self.model} {self.model_version}: "
                f"{found} ({NOTICE})")


def notice_for(store: JobStore, item: OutboxItem, job_id: int) -> Notice:
    """The notice of outbox ``item`` from its job and its result file's header."""
    origin = JobQueue(store).origin(job_id)
    if origin is None:
        raise LookupError(f"job {job_id} is gone")
    pipeline, model, result, series_uid, study_uid = origin
    summary = json.loads(result) if result else {}
    header = pydicom.dcmread(item.path, stop_before_pixels=True)
    return Notice(
        item_id=item.id, urgent=bool(summary.get("urgent")), study_uid=study_uid,
        series_uid=series_uid, accession=str(header.get("AccessionNumber", "") or ""),
        patient_id=str(header.get("PatientID", "") or ""),
        patient_name=str(header.get("PatientName", "") or ""), pipeline=pipeline,
        model=model, model_version=str(summary.get("model_version", "")),
        findings={name: Finding.from_json(found)
                  for name, found in summary.get("labels", {}).items()},
        report_uid=item.sop_instance_uid, issued=dt.datetime.now(dt.UTC))

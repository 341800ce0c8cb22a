"""Rejection notes a PACS sends to the node (IHE IOCM: a Key Object Selection Document titled
from CID 7011) that reject results the node delivered: the radiologist or the PACS
administrator rejected them there. Each becomes a ``reject`` verdict on the result's job, from
the sending AE, once per note; a note the node wrote itself (withdrawing its own results) is
not a verdict."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydicom import dcmread
from pydicom.uid import KeyObjectSelectionDocumentStorage

from node.store.verdicts import Verdicts

log = logging.getLogger(__name__)
# CID 7011 Rejected for Quality Reasons, Rejected for Patient Safety Reasons, Incorrect
# Modality Worklist Entry, Data Retention Policy Expired
REJECTION_TITLES = {"113001", "113037", "113038", "113039"}


def _referenced(note: object) -> list[str]:
    return [str(instance.ReferencedSOPInstanceUID)
            for study in getattr(note, "CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence]


def verdicts_from_notes(paths: Iterable[str], verdicts: Verdicts, sender: str,
                        now: float) -> dict[int, str]:
    """Record a ``reject`` per job whose results a rejection note among ``paths`` names;
    returns job -> the note's title."""
    found: dict[int, str] = {}
    for path in paths:
        try:
            note = dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # the instance stays in the spool; it is just not a verdict
            log.warning("a received instance could not be read as a rejection note (%s)",
                        exc.__class__.__name__)
            continue
        titles = note.get("ConceptNameCodeSequence") or []
        if note.get("SOPClassUID") != KeyObjectSelectionDocumentStorage or not titles:
            continue
        title = titles[0]
        if title.get("CodingSchemeDesignator") != "DCM" \
                or title.get("CodeValue") not in REJECTION_TITLES \
                or verdicts.is_own_note(str(note.SOPInstanceUID)):
            continue
        jobs = set(verdicts.jobs_of_results(_referenced(note)).values())
        for job in sorted(jobs):
            meaning = str(title.get("CodeMeaning", title.CodeValue))
            if verdicts.record(job, "reject", f"rejection note: {meaning}", sender, "pacs",
                               now, reference=str(note.SOPInstanceUID)):
                found[job] = meaning
    return found

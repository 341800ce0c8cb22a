"""IHE IOCM rejection notes: a Key Object Selection Document (PS3.3 A.59) whose Document Title
comes from CID 7011 and which references every rejected instance, with its series and study
(IHE RAD TF-3 Imaging Object Change Management; PS3.16 TID 2010). One note per study and
destination; its SOP Instance UID derives from what it rejects and where it goes, so writing it
again gives the same object."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.encode.common import (
    MANUFACTURER,
    keep_source_patient_name,
    name_uid,
    with_component_person_names,
)

# CID 7011 Rejected for Quality Reasons / Rejected for Patient Safety Reasons
REJECTED_FOR_QUALITY = Code("113001", "DCM", "Rejected for Quality Reasons")
REJECTED_FOR_SAFETY = Code("113037", "DCM", "Rejected for Patient Safety Reasons")
TITLES = {"quality": REJECTED_FOR_QUALITY, "safety": REJECTED_FOR_SAFETY}
REJECTION_SERIES_NUMBER = 9009


def rejection_note(rejected: Sequence[Dataset], reason: str, destination: str,
                   device_ae_title: str, description: str = "") -> Dataset:
    """The note rejecting ``rejected`` (headers of result objects of one study) for ``reason``
    (``quality``: superseded; ``safety``: withdrawn as wrong)."""
    uids = sorted(str(d.SOPInstanceUID) for d in rejected)
    studies = {str(d.StudyInstanceUID) for d in rejected}
    if len(studies) != 1:
        raise ValueError(f"a rejection note covers one study, not {len(studies)}")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=name_uid("ainode device", device_ae_title), name=device_ae_title,
            manufacturer_name=MANUFACTURER),
    )
    views = [with_component_person_names(d) for d in rejected]
    content = hd.ko.KeyObjectSelection(
        document_title=TITLES[reason], referenced_objects=views,
        observer_device_context=observer, description=description[:1024] or None)
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=views, content=content,
        series_instance_uid=name_uid("rejection series", reason, destination, *uids),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=name_uid("rejection", reason, destination, *uids),
        instance_number=1, manufacturer=MANUFACTURER)
    note.SeriesDescription = f"AI result rejection note ({TITLES[reason].meaning})"[:64]
    return keep_source_patient_name(cast(Dataset, note), rejected[0])

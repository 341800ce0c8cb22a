"""Read the identifying header of a DICOM Part 10 stream without decoding pixel data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

VERIFICATION = "1.2.840.10008.1.1"  # Verification SOP Class, PS3.4 A.4

_IDENTITY_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "NumberOfSeriesRelatedInstances",
]


class UnreadableInstance(ValueError):
    """The stream is not a DICOM dataset we can identify; the message says why (no patient data)."""


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    expected_count: int | None


def read_identity(stream: BinaryIO) -> InstanceIdentity:
    """UIDs, modality and expected series size (0020,1209) from a Part 10 stream.

    Raises :class:`UnreadableInstance` when the header cannot be parsed or a UID that the
    node needs to place the instance (PS3.3 C.12.1 SOP Common, C.7.2.1, C.7.3.1) is missing.
    """
    try:
        dataset = dcmread(stream, stop_before_pixels=True, specific_tags=_IDENTITY_TAGS)
    except (InvalidDicomError, EOFError) as exc:
        raise UnreadableInstance(f"not a readable DICOM stream ({exc.__class__.__name__})") from exc
    except (ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        raise UnreadableInstance(f"header cannot be parsed ({exc.__class__.__name__})") from exc
    values: dict[str, str] = {}
    for keyword in _IDENTITY_TAGS[:4]:
        try:
            value = str(dataset.get(keyword, "") or "").strip().rstrip("\0")
        except (ValueError, TypeError) as exc:
            raise UnreadableInstance(f"{keyword} cannot be decoded") from exc
        if not value:
            raise UnreadableInstance(f"{keyword} is missing")
        values[keyword] = value
    expected: int | None
    try:
        raw_expected = dataset.get("NumberOfSeriesRelatedInstances")
        expected = int(raw_expected) if raw_expected not in (None, "") else None
    except (ValueError, TypeError):
        expected = None
    if expected is not None and expected <= 0:
        expected = None
    try:
        modality = str(dataset.get("Modality", "") or "").strip()
    except (ValueError, TypeError):
        modality = ""
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    return InstanceIdentity(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        modality=modality or "OT",
        transfer_syntax_uid=transfer_syntax,
        expected_count=expected,
    )

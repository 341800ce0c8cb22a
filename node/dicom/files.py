"""Read the identifying header of a DICOM Part 10 stream without decoding pixel data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from node.domain import InstanceRef

VERIFICATION = "1.2.840.10008.1.1"  # Verification SOP Class, PS3.4 A.4

_IDENTITY_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "ImageType",
    "SliceThickness",
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
    body_part: str = ""
    series_description: str = ""
    image_type: str = ""
    slice_thickness_mm: float | None = None
    sending_ae: str = ""  # (0002,0017) as the node recorded it at reception
    receiving_ae: str = ""  # (0002,0018)

    def ref(self, path: str, size_bytes: int, calling_ae: str, called_ae: str) -> InstanceRef:
        """The spooled instance this identity describes."""
        return InstanceRef(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            series_instance_uid=self.series_instance_uid,
            study_instance_uid=self.study_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            modality=self.modality,
            path=path,
            size_bytes=size_bytes,
            calling_ae=calling_ae,
            called_ae=called_ae,
            expected_count=self.expected_count,
            body_part=self.body_part,
            series_description=self.series_description,
            image_type=self.image_type,
            slice_thickness_mm=self.slice_thickness_mm,
        )


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
    modality = _text(dataset, "Modality")
    try:
        thickness = dataset.get("SliceThickness")
        slice_thickness = float(thickness) if thickness not in (None, "") else None
    except (ValueError, TypeError):
        slice_thickness = None
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    sending_ae = str(getattr(meta, "SendingApplicationEntityTitle", "") or "").strip()
    receiving_ae = str(getattr(meta, "ReceivingApplicationEntityTitle", "") or "").strip()
    return InstanceIdentity(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        modality=modality or "OT",
        transfer_syntax_uid=transfer_syntax,
        expected_count=expected,
        body_part=_text(dataset, "BodyPartExamined"),
        series_description=_text(dataset, "SeriesDescription"),
        image_type=_text(dataset, "ImageType"),
        slice_thickness_mm=slice_thickness,
        sending_ae=sending_ae,
        receiving_ae=receiving_ae,
    )


def stamp_association(meta: FileMetaDataset, calling_ae: str, called_ae: str) -> None:
    """Record who sent an instance to whom in the file meta we write for it: Sending and
    Receiving Application Entity Title (0002,0017/0018, PS3.10 7.1), so that an instance
    re-indexed after a crash keeps its calling AE for routing and replies."""
    meta.SendingApplicationEntityTitle = calling_ae.strip()
    meta.ReceivingApplicationEntityTitle = called_ae.strip()


def _text(dataset: Dataset, keyword: str) -> str:
    """A text attribute, multi-values joined by backslashes; empty when absent or undecodable."""
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, KeyError):
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()

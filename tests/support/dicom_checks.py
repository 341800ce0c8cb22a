"""Checks of the DICOM objects the node writes: dciodvfy (dicom3tools) on each, fetched back from
Orthanc."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
from dicomweb_client.api import DICOMwebClient

from tests.support.orthanc import Orthanc

DCIODVFY = "/usr/bin/dciodvfy"


def fetch(pacs: Orthanc, study_uid: str, series: dict[str, Any]) -> list[pydicom.Dataset]:
    client = DICOMwebClient(pacs.dicomweb)
    return client.retrieve_series(study_uid, series["0020000E"]["Value"][0])


def dciodvfy_errors(dataset: pydicom.Dataset, tmp_path: Path) -> list[str]:
    path = tmp_path / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


def one_segment_mask(seg: Any, uids: list[str], label: str, type_code: str) -> Any:
    """The mask of a SEG's only segment on the source slices ``uids`` (in that order), after
    checking its label and Segmented Property Type code."""
    (description,) = seg.SegmentSequence
    assert description.SegmentLabel == label
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == type_code
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True)
    return masks[..., 0] > 0

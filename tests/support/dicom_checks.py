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

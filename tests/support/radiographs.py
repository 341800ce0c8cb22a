"""Chest radiographs made for tests from the shared CR: with a synthetic round mass, or blank.

Each is a new instance in a new study and series (new UIDs), stored uncompressed, so that the
node treats it as a different patient's study of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr" / "RG1_JLSN.dcm"


def radiograph(target: Path, kind: str, patient_id: str,
               pixel_spacing: str | None = None) -> Path:
    """``kind``: ``mass`` (a disc of 140 px radius in the right lung, 35 % of the image's range
    brighter on display), ``blank`` (every pixel the image's mean) or ``plain``.
    ``pixel_spacing`` (e.g. ``"0.15\\0.15"``) replaces the shared file's ``0\\0``."""
    dataset = pydicom.dcmread(SOURCE)
    pixels = dataset.pixel_array.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if kind == "mass":
        rows, cols = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
        disc = np.clip(140.5 - np.hypot(rows - 760, cols - 575), 0, 1)
        pixels = pixels - 0.35 * (high - low) * disc  # MONOCHROME1: lower is brighter
    elif kind == "blank":
        pixels = np.full_like(pixels, pixels.mean())
    dataset.PixelData = np.clip(pixels, 0, 2 ** int(dataset.BitsStored) - 1).astype(
        np.uint16).tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientID = patient_id
    if pixel_spacing is not None:
        dataset.PixelSpacing = pixel_spacing.split("\\")
    path = target / f"{kind}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path

"""Series -> volume + affine in patient coordinates (LPS, mm), with geometry checks.

Slices are ordered by their position along the slice normal (never by file name or arrival).
Pixel values are rescaled (Rescale Slope/Intercept, PS3.3 C.11.1.1.2; for CT: Hounsfield units)
and MONOCHROME1 is inverted so that larger always means brighter. Enhanced multi-frame images
contribute one slice per frame (PS3.3 C.7.6.16 functional groups).

A projection radiograph (CR, DX, … PS3.3 C.8.9 / C.8.11: one frame, no Image Plane module)
becomes a one-slice volume in image coordinates: its pixel spacing from Pixel Spacing or else
Imager Pixel Spacing (PS3.3 10.7.1.3), and ``pixel_spacing_known`` false when neither holds a
positive value (areas are then not reported in mm²).

A series that is not a regular volume is refused with a :class:`VolumeError` whose ``reason``
is short and readable: mixed orientation, mixed image sizes, duplicate positions, gantry tilt
(rejected, not resampled: resampling changes the pixels a radiologist would compare against),
missing slices / non-uniform spacing, too few slices, pixel data that cannot be decoded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
DUPLICATE_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_DEG = 0.5
SPACING_TOLERANCE = 0.01  # relative to the median step (and at least 0.01 mm)


class VolumeError(ValueError):
    """The series cannot be made into a volume; ``reason`` says why, for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SliceRef:
    """Where one slice of the volume comes from: an instance, and a frame for multi-frame."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class Volume:
    """voxels[k, j, i]: slice k along the normal, row j, column i."""

    voxels: NDArray[np.float32]
    affine: NDArray[np.float64]  # (i, j, k, 1) -> patient LPS mm
    slices: tuple[SliceRef, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    headers: tuple[Dataset, ...] = ()  # per slice: its instance without pixel data
    projection: bool = False  # a 2-D radiograph: one slice, no patient-space geometry
    pixel_spacing_known: bool = True

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm."""
        k, j, i = (float(np.linalg.norm(self.affine[:3, axis])) for axis in (2, 1, 0))
        return k, j, i

    @property
    def voxel_volume_ml(self) -> float:
        slice_mm, row_mm, col_mm = self.spacing
        return slice_mm * row_mm * col_mm / 1000.0


@dataclass(frozen=True)
class _Plane:
    pixels: NDArray[np.float32]
    orientation: NDArray[np.float64]  # row direction (3), column direction (3)
    position: NDArray[np.float64]
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    ref: SliceRef
    header: Dataset | None = None


def _floats(value: object, count: int, name: str) -> NDArray[np.float64]:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{name} is missing or not numeric") from exc
    if array.shape != (count,):
        raise VolumeError(f"{name} has {array.size} values, expected {count}")
    return array


def _pixels(dataset: Dataset) -> NDArray[np.float32]:
    try:
        array = dataset.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise VolumeError(f"pixel data cannot be decoded ({name}): {exc}"[:200]) from exc
    return np.asarray(array, dtype=np.float32)


def _rescale(pixels: NDArray[np.float32], source: Dataset) -> NDArray[np.float32]:
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        pixels = pixels * np.float32(slope) + np.float32(intercept)
    return pixels


def _item(sequence_owner: Dataset | None, keyword: str) -> Dataset | None:
    if sequence_owner is None or keyword not in sequence_owner:
        return None
    sequence = sequence_owner[keyword].value
    return sequence[0] if sequence else None


def _planes(dataset: Dataset) -> list[_Plane]:
    """One plane per frame (enhanced multi-frame) or the single image."""
    pixels = _pixels(dataset)
    monochrome1 = str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    sop_uid, sop_class = str(dataset.SOPInstanceUID), str(dataset.SOPClassUID)
    if "PerFrameFunctionalGroupsSequence" in dataset:
        shared = _item(dataset, "SharedFunctionalGroupsSequence")
        frames = dataset.PerFrameFunctionalGroupsSequence
        if pixels.ndim == 2:
            pixels = pixels[None]
        planes = []
        for index, frame in enumerate(frames):
            def group(keyword: str, frame: Dataset = frame) -> Dataset | None:
                return _item(frame, keyword) or _item(shared, keyword)

            orientation = group("PlaneOrientationSequence")
            measures = group("PixelMeasuresSequence")
            transform = group("PixelValueTransformationSequence")
            plane_pos = group("PlanePositionSequence")
            image = _rescale(pixels[index], transform or dataset)
            planes.append(_Plane(
                image,
                _floats(getattr(orientation, "ImageOrientationPatient", None), 6,
                        "ImageOrientationPatient"),
                _floats(getattr(plane_pos, "ImagePositionPatient", None), 3,
                        "ImagePositionPatient"),
                tuple(_floats(getattr(measures, "PixelSpacing", None), 2,
                              "PixelSpacing")),
                SliceRef(sop_uid, sop_class, index + 1),
            ))
    else:
        if pixels.ndim != 2:
            raise VolumeError("multi-frame image without per-frame geometry")
        spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
        planes = [_Plane(
            _rescale(pixels, dataset),
            _floats(dataset.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),
            _floats(dataset.get("ImagePositionPatient"), 3, "ImagePositionPatient"),
            tuple(_floats(spacing, 2, "PixelSpacing")),
            SliceRef(sop_uid, sop_class),
        )]
    if monochrome1:
        planes = [
            replace(p, pixels=p.pixels.max() + p.pixels.min() - p.pixels) for p in planes
        ]
    return planes


def _check_and_order(planes: list[_Plane], min_slices: int) -> tuple[list[_Plane], float]:
    """Sorted planes and the slice step (mm), or a :class:`VolumeError`."""
    if len(planes) < min_slices:
        raise VolumeError(f"too few slices for a volume: {len(planes)} (need {min_slices})")
    first = planes[0]
    if any(np.abs(p.orientation - first.orientation).max() > ORIENTATION_TOLERANCE
           for p in planes):
        raise VolumeError("mixed orientation: the slices are not parallel")
    if any(p.pixels.shape != first.pixels.shape
           or not np.allclose(p.pixel_spacing, first.pixel_spacing, atol=1e-4) for p in planes):
        raise VolumeError("mixed image sizes or pixel spacings within the series")
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    order = sorted(planes, key=lambda p: float(p.position @ normal))
    if len(order) == 1:
        return order, 1.0
    along = np.array([float(p.position @ normal) for p in order])
    steps = np.diff(along)
    duplicates = int((steps < DUPLICATE_TOLERANCE_MM).sum())
    if duplicates:
        raise VolumeError(f"duplicate slice positions: {duplicates + 1} slices share a position")
    offset = order[-1].position - order[0].position
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(np.cross(offset, normal)),
                                       abs(offset @ normal))))
    if tilt > TILT_TOLERANCE_DEG:
        raise VolumeError(
            f"gantry tilt of {tilt:.1f} degrees: tilted series are rejected, not resampled"
        )
    median = float(np.median(steps))
    if steps.max() - steps.min() > max(0.01, SPACING_TOLERANCE * median):
        raise VolumeError(
            f"missing slices or non-uniform spacing: steps {steps.min():.2f} to "
            f"{steps.max():.2f} mm"
        )
    return order, median


def _positive_spacing(dataset: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = [float(v) for v in dataset.get(keyword) or []]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and min(values) > 0:
            return values[0], values[1]
    return None


PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RG", "IO", "PX"})


def is_projection(dataset: Dataset) -> bool:
    """A single-frame radiograph (CR, DX, …) without an Image Plane module."""
    return (str(dataset.get("Modality", "")) in PROJECTION_MODALITIES
            and "ImageOrientationPatient" not in dataset
            and "PerFrameFunctionalGroupsSequence" not in dataset
            and int(dataset.get("NumberOfFrames", 1) or 1) == 1)


def _projection(datasets: Sequence[Dataset]) -> Volume:
    if len(datasets) != 1:
        raise VolumeError(f"a series of {len(datasets)} projection images: the node reads a "
                          "radiograph series of one image (send each view as its own series)")
    (dataset,) = datasets
    pixels = _pixels(dataset)
    if pixels.ndim != 2:
        raise VolumeError("the radiograph is not a single grey-scale frame")
    pixels = _rescale(pixels, dataset)
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    spacing = _positive_spacing(dataset)
    row_mm, col_mm = spacing or (1.0, 1.0)
    affine = np.diag([col_mm, row_mm, 1.0, 1.0])
    dataset.pop("PixelData", None)
    return Volume(
        voxels=pixels[None].astype(np.float32, copy=False),
        affine=affine,
        slices=(SliceRef(str(dataset.SOPInstanceUID), str(dataset.SOPClassUID)),),
        study_instance_uid=str(dataset.StudyInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        frame_of_reference_uid=str(dataset.get("FrameOfReferenceUID", "")),
        modality=str(dataset.get("Modality", "")),
        headers=(dataset,),
        projection=True,
        pixel_spacing_known=spacing is not None,
    )


def prefetch(paths: Sequence[Path | str]) -> None:
    """Ask the kernel to start reading every file now (``POSIX_FADV_WILLNEED``), so that the
    reads that follow, one file after another, find them in memory: a series whose files the
    page cache no longer holds loaded in 0.35-0.75 s instead of 0.26-0.30 s (134 CT slices,
    this machine). Best effort: a file that cannot be opened is left to the read to report."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def load_series(paths: Sequence[Path | str], min_slices: int = 3) -> Volume:
    """Read, check and stack a series. Raises :class:`VolumeError` with a readable reason."""
    if not paths:
        raise VolumeError("the series has no instances")
    prefetch(paths)
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
            raise VolumeError(f"an instance cannot be read ({exc.__class__.__name__})") from exc
    first = datasets[0]
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"):
        if keyword not in first:
            raise VolumeError(f"{keyword} is missing")
    if len({str(d.SeriesInstanceUID) for d in datasets}) > 1:
        raise VolumeError("instances from more than one series")
    if len({str(d.get("FrameOfReferenceUID", "")) for d in datasets}) > 1:
        raise VolumeError("instances in more than one frame of reference")
    if any(is_projection(d) for d in datasets):
        return _projection(datasets)
    planes: list[_Plane] = []
    for dataset in datasets:
        found = _planes(dataset)
        dataset.pop("PixelData", None)  # decoded above; keep only the header
        planes.extend(replace(plane, header=dataset) for plane in found)
    ordered, step = _check_and_order(planes, min_slices)
    reference = ordered[0]
    row_dir, col_dir = reference.orientation[:3], reference.orientation[3:]
    affine = np.eye(4)
    affine[:3, 0] = row_dir * reference.pixel_spacing[1]  # i: along a row, column spacing
    affine[:3, 1] = col_dir * reference.pixel_spacing[0]  # j: down a column, row spacing
    affine[:3, 2] = np.cross(row_dir, col_dir) * step
    affine[:3, 3] = reference.position
    return Volume(
        voxels=np.stack([p.pixels for p in ordered]).astype(np.float32, copy=False),
        affine=affine,
        slices=tuple(p.ref for p in ordered),
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        headers=tuple(p.header for p in ordered if p.header is not None),
    )

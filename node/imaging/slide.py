"""A whole slide (VL Whole Slide Microscopy Image, PS3.3 A.32.8): its pyramid, read lazily.

One series is one slide: instances whose Image Type (value 3) is VOLUME are the pyramid's
levels (the largest total pixel matrix is the base), LABEL, OVERVIEW and THUMBNAIL images come
with it. :func:`describe_slide` reads headers only (routing: specimen, stain, optical path);
:class:`LevelReader` reads a region of one level's total pixel matrix by decoding only the
frames (tiles) it touches: highdicom's lazy frame retrieval reads a frame's bytes through the
Basic Offset Table, so a 4 GB level is never in memory. highdicom is the library chosen
because the node already writes SEG, SR and annotations with it and it handles TILED_FULL and
TILED_SPARSE (per-frame positions) alike; wsidicom would add a second object model of the same
files. :func:`tissue_mask` finds tissue on the lowest-resolution level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.uid import VLWholeSlideMicroscopyImageStorage
from scipy import ndimage
from skimage import filters as _filters

from node.imaging.volume import VolumeError

filters: Any = _filters  # scikit-image is untyped
WSI_SOP_CLASS = str(VLWholeSlideMicroscopyImageStorage)
FLAVORS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")
MAX_TISSUE_LEVEL_PIXELS = 25_000_000  # the level tissue is detected on is read whole
WHITE = 255


class SlideError(VolumeError):
    """The series is not a slide the node can read (no pyramid, parts missing): permanent."""


@dataclass(frozen=True)
class SlideLevel:
    """One image of the slide, as its header describes it."""

    path: str
    sop_instance_uid: str
    flavor: str  # VOLUME, LABEL, OVERVIEW or THUMBNAIL (Image Type value 3)
    rows: int  # Total Pixel Matrix Rows
    columns: int  # Total Pixel Matrix Columns
    spacing_mm: tuple[float, float]  # (row, column) Pixel Spacing
    frame_of_reference_uid: str
    concatenation: tuple[str, int, int] | None = None  # (UID, number, total or 0)

    @property
    def pixels(self) -> int:
        return self.rows * self.columns

    @property
    def spacing(self) -> float:
        """The level's pixel spacing in mm (the mean of rows and columns)."""
        return (self.spacing_mm[0] + self.spacing_mm[1]) / 2


@dataclass(frozen=True)
class SlideDescription:
    """What the headers of a slide's instances say: its levels (VOLUME, finest first), its
    other images, and what routing rules may match (no patient data)."""

    series_instance_uid: str
    levels: tuple[SlideLevel, ...]
    others: tuple[SlideLevel, ...] = ()
    image_types: tuple[str, ...] = ()
    specimens: tuple[str, ...] = ()  # identifiers and short descriptions
    stains: tuple[str, ...] = ()  # staining substances (code meanings or text)
    optical_paths: tuple[str, ...] = ()  # descriptions and illumination code meanings
    headers: dict[str, Dataset] = field(default_factory=dict, repr=False)  # SOP UID -> header

    @property
    def base(self) -> SlideLevel:
        if not self.levels:
            raise SlideError("the series has no VOLUME image (no pyramid level)")
        return self.levels[0]

    def header(self, level: SlideLevel) -> Dataset:
        return self.headers[level.sop_instance_uid]


def _text(value: Any) -> str:
    return " ".join(str(value).split())[:128]


def _staining(description: Dataset) -> list[str]:
    """Staining substances of one specimen (TID 8004 steps, PS3.3 C.8.12.2.1.1): the value of
    each *Using substance* item, coded or text, and the Specimen Short Description."""
    found = []
    for step in description.get("SpecimenPreparationSequence", []):
        for item in step.get("SpecimenPreparationStepContentItemSequence", []):
            name = item.get("ConceptNameCodeSequence")
            if not name or str(name[0].get("CodeValue", "")) != "424361007":  # Using substance
                continue
            if item.get("ConceptCodeSequence"):
                found.append(_text(item.ConceptCodeSequence[0].get("CodeMeaning", "")))
            elif item.get("TextValue"):
                found.append(_text(item.TextValue))
    return found


def _level(path: str, header: Dataset) -> SlideLevel:
    image_type = [str(v).upper() for v in header.get("ImageType", [])]
    flavor = image_type[2] if len(image_type) > 2 and image_type[2] in FLAVORS else "VOLUME"
    try:
        measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        spacing = (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1]))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        spacing = (0.0, 0.0)
    concatenation = None
    if "ConcatenationUID" in header:
        concatenation = (str(header.ConcatenationUID),
                         int(header.get("InConcatenationNumber", 1) or 1),
                         int(header.get("InConcatenationTotalNumber", 0) or 0))
    return SlideLevel(
        path=path,
        sop_instance_uid=str(header.SOPInstanceUID),
        flavor=flavor,
        rows=int(header.get("TotalPixelMatrixRows", header.get("Rows", 0)) or 0),
        columns=int(header.get("TotalPixelMatrixColumns", header.get("Columns", 0)) or 0),
        spacing_mm=spacing,
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "")),
        concatenation=concatenation,
    )


def describe_slide(paths: list[str]) -> SlideDescription:
    """The slide of a series from its instances' headers (pixel data is not read)."""
    levels: list[SlideLevel] = []
    others: list[SlideLevel] = []
    headers: dict[str, Dataset] = {}
    image_types: set[str] = set()
    specimens: set[str] = set()
    stains: set[str] = set()
    optical: set[str] = set()
    series_uid = ""
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise SlideError(f"an instance of the slide cannot be read: {exc}") from exc
        if str(header.get("SOPClassUID", "")) != WSI_SOP_CLASS:
            continue  # e.g. an annotation sent along: not part of the pyramid
        series_uid = str(header.get("SeriesInstanceUID", ""))
        level = _level(path, header)
        headers[level.sop_instance_uid] = header
        (levels if level.flavor == "VOLUME" else others).append(level)
        image_types.add("\\".join(str(v) for v in header.get("ImageType", [])))
        for description in header.get("SpecimenDescriptionSequence", []):
            for key in ("SpecimenIdentifier", "SpecimenShortDescription"):
                if description.get(key):
                    specimens.add(_text(description.get(key)))
            stains.update(_staining(description))
        for path_item in header.get("OpticalPathSequence", []):
            if path_item.get("OpticalPathDescription"):
                optical.add(_text(path_item.OpticalPathDescription))
            for illumination in path_item.get("IlluminationTypeCodeSequence", []):
                optical.add(_text(illumination.get("CodeMeaning", "")))
    levels.sort(key=lambda level: -level.pixels)
    return SlideDescription(series_uid, tuple(levels), tuple(others), tuple(sorted(image_types)),
                            tuple(sorted(specimens)), tuple(sorted(stains - {""})),
                            tuple(sorted(optical - {""})), headers)


def check_pyramid(slide: SlideDescription) -> list[SlideLevel]:
    """The levels the node can read, finest first; raises :class:`SlideError` saying why the
    slide cannot be read (no VOLUME level, no Frame of Reference, levels of different slides,
    a level whose concatenation lacks parts)."""
    base = slide.base
    if not base.frame_of_reference_uid:
        raise SlideError("the slide has no Frame of Reference UID (PS3.3 A.32.8 requires it): "
                         "results could not be placed on it")
    readable = []
    parts: dict[str, list[SlideLevel]] = {}
    for level in slide.levels:
        if level.frame_of_reference_uid != base.frame_of_reference_uid:
            raise SlideError("the series' levels have different Frames of Reference")
        if min(level.spacing_mm) <= 0:
            raise SlideError("a level has no Pixel Spacing (Shared Functional Groups)")
        width = level.columns * level.spacing_mm[1]
        if not math.isclose(width, base.columns * base.spacing_mm[1], rel_tol=0.05, abs_tol=0.05):
            raise SlideError("the levels do not image the same area (widths differ)")
        if level.concatenation is not None:
            parts.setdefault(level.concatenation[0], []).append(level)
        else:
            readable.append(level)
    for uid, members in parts.items():
        total = max(member.concatenation[2] for member in members if member.concatenation)
        if total and len(members) < total:
            raise SlideError(f"a level is split in {total} instances (concatenation {uid}) "
                             f"and {len(members)} arrived")
        if len(members) == 1:
            readable.append(members[0])
        # a level in several parts is not read (the other levels are)
    if not readable:
        raise SlideError("no level of the slide is in one instance")
    readable.sort(key=lambda level: -level.pixels)
    return readable


class LevelReader:
    """Regions of one level's total pixel matrix as RGB uint8, decoding only the frames a
    region touches (outside the matrix: white)."""

    def __init__(self, level: SlideLevel) -> None:
        import highdicom as hd

        self.level = level
        self._image = hd.imread(level.path, lazy_frame_retrieval=True)
        if int(self._image.get("SamplesPerPixel", 1)) != 3:
            raise SlideError("only RGB (brightfield) slides are read")

    def region(self, row: int, column: int, height: int, width: int) -> NDArray[np.uint8]:
        """[height, width, 3] from (row, column) (0-based, may lie partly outside)."""
        out = np.full((height, width, 3), WHITE, dtype=np.uint8)
        top, left = max(row, 0), max(column, 0)
        bottom = min(row + height, self.level.rows)
        right = min(column + width, self.level.columns)
        if bottom <= top or right <= left:
            return out
        pixels = self._image.get_total_pixel_matrix(
            row_start=top + 1, row_end=bottom + 1, column_start=left + 1, column_end=right + 1,
            dtype=np.uint8, apply_icc_profile=False)
        out[top - row:bottom - row, left - column:right - column] = pixels.reshape(
            bottom - top, right - left, 3)
        return out


def tissue_level(levels: list[SlideLevel]) -> SlideLevel:
    """The lowest-resolution level, where tissue is detected (read whole)."""
    level = levels[-1]
    if level.pixels > MAX_TISSUE_LEVEL_PIXELS:
        raise SlideError(f"the slide's smallest level has {level.pixels} pixels; tissue is "
                         f"detected on a level of at most {MAX_TISSUE_LEVEL_PIXELS}")
    return level


def tissue_mask(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Where there is tissue on a low-resolution image of a brightfield slide: saturation
    (HSV) above Otsu's threshold of its histogram (at least 0.05) or clearly darker than the
    glass, then opened once and holes filled. Glass is bright and grey, stained tissue
    coloured."""
    values = rgb.astype(np.float32)
    highest = values.max(axis=2)
    saturation = (highest - values.min(axis=2)) / np.maximum(highest, 1.0)
    threshold = 0.05
    if np.ptp(saturation) > 0:
        threshold = max(float(filters.threshold_otsu(saturation)), threshold)
    brightness = values.mean(axis=2)
    glass = float(np.percentile(brightness, 95))
    tissue = (saturation > threshold) | (brightness < glass - 60)
    tissue = ndimage.binary_opening(tissue, iterations=1)
    filled: NDArray[np.bool_] = ndimage.binary_fill_holes(tissue)
    return filled

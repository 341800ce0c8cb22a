"""DICOM Segmentation (PS3.3 A.51) of a label map or of probability maps, with highdicom.

A label map gives a BINARY SEG, probability maps (heatmaps) a FRACTIONAL one of type
PROBABILITY (PS3.3 C.8.20.2.3: 0-255 for 0-1). One segment per label present, coded with the
model's SNOMED CT / DCM codes, a display colour (RecommendedDisplayCIELabValue), algorithm
identification, empty frames omitted, same Study and Frame of Reference as the source; frames
reference their source instances.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.coding import Code

from node.encode.common import Provenance, present_labels
from node.settings import SegmentSpec


class EncodeError(ValueError):
    """A result cannot be encoded as asked (e.g. no codes for a label); the job fails."""


def code(spec_code: object) -> Code:
    scheme, value, meaning = (getattr(spec_code, k) for k in ("scheme", "value", "meaning"))
    return Code(value, scheme, meaning)


def segment_specs(
    label_names: tuple[str, ...], values: list[int], segments: dict[str, SegmentSpec]
) -> list[SegmentSpec]:
    missing = [label_names[v] for v in values if label_names[v] not in segments]
    if missing:
        raise EncodeError(
            f"neither the model nor the pipeline declares codes for {', '.join(missing)}"
        )
    return [segments[label_names[v]] for v in values]


def segment_descriptions(
    names: list[str], specs: list[SegmentSpec], provenance: Provenance, label_suffix: str = ""
) -> list[hd.seg.SegmentDescription]:
    """One Segment Description per label, numbered from 1, tracked by the label's name
    (``label_suffix`` is added to the Segment Label only, e.g. " tissue")."""
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{name}{label_suffix}"[:64],
            segmented_property_category=code(spec.category),
            segmented_property_type=code(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=provenance.algorithm(),
            tracking_uid=provenance.uid(f"tracking-{name}"),
            tracking_id=f"{provenance.model_name} {name}",
            display_color=hd.color.CIELabColor.from_rgb(*spec.color),
        )
        for number, (name, spec) in enumerate(zip(names, specs, strict=True), start=1)
    ]


def _segmentation(sources: list[Dataset], pixels: NDArray[Any], kind: str,
                  descriptions: list[hd.seg.SegmentDescription],
                  provenance: Provenance) -> Dataset:
    fractional = kind == "fractional"
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
        else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        content_description=provenance.description,
        content_label="AI_HEATMAP" if fractional else "AI_SEG",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,  # FRACTIONAL only
        **provenance.instance_attributes("seg"),
        **provenance.device_attributes(),
        omit_empty_frames=True,
    )


def build_seg(
    sources: list[Dataset],
    labels: NDArray[np.uint8],
    label_names: tuple[str, ...],
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
    values: list[int] | None = None,
) -> tuple[Dataset, list[int]]:
    """The SEG, and the model label value of each segment number (index + 1). ``values``:
    the label values (> 0) present in ``labels``, when already counted."""
    values = present_labels(labels, label_names) if values is None else values
    if not values:
        raise EncodeError("the label map is empty: there is nothing to segment")
    specs = segment_specs(label_names, values, segments)
    numbers = np.zeros(256, dtype=np.uint8)  # label value -> segment number, one pass
    numbers[values] = np.arange(1, len(values) + 1)
    remapped = numbers[labels]
    names = [label_names[value] for value in values]
    return _segmentation(sources, remapped, "binary",
                         segment_descriptions(names, specs, provenance),
                         provenance), values


def build_probability_seg(
    sources: list[Dataset],
    maps: NDArray[np.float32],
    findings: tuple[str, ...],
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
) -> tuple[Dataset, list[int]]:
    """The FRACTIONAL (PROBABILITY) SEG of a heatmap model's maps ([F, frames, rows,
    columns] in 0-1), one segment per finding whose map is not zero once stored as 0-255; and
    the finding index of each segment."""
    shown = [index for index in range(maps.shape[0])
             if float(maps[index].max()) * 255 >= 0.5]
    if not shown:
        raise EncodeError("every probability map is zero: there is nothing to segment")
    specs = segment_specs(findings, shown, segments)
    stacked = np.stack([maps[index] for index in shown], axis=-1)  # [frames, rows, cols, segs]
    names = [findings[index] for index in shown]
    return _segmentation(sources, stacked, "fractional",
                         segment_descriptions(names, specs, provenance),
                         provenance), shown

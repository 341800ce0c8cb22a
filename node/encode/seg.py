"""DICOM Segmentation (PS3.3 A.51) of a label map, with highdicom.

BINARY, one segment per label present, coded with the model's SNOMED CT / DCM codes, a
display colour (RecommendedDisplayCIELabValue), algorithm identification, empty frames omitted,
same Study and Frame of Reference as the source; frames reference their source instances.
"""

from __future__ import annotations

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


def build_seg(
    sources: list[Dataset],
    labels: NDArray[np.uint8],
    label_names: tuple[str, ...],
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
) -> tuple[Dataset, list[int]]:
    """The SEG, and the model label value of each segment number (index + 1)."""
    values = present_labels(labels, label_names)
    if not values:
        raise EncodeError("the label map is empty: there is nothing to segment")
    specs = segment_specs(label_names, values, segments)
    remapped = np.zeros(labels.shape, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        remapped[labels == value] = number
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label_names[value],
            segmented_property_category=code(spec.category),
            segmented_property_type=code(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=provenance.algorithm(),
            tracking_uid=provenance.uid(f"tracking-{label_names[value]}"),
            tracking_id=f"{provenance.model_name} {label_names[value]}",
            display_color=hd.color.CIELabColor.from_rgb(*spec.color),
        )
        for number, (value, spec) in enumerate(zip(values, specs, strict=True), start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=remapped,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        content_description=provenance.description,
        content_label="AI_SEG",
        **provenance.instance_attributes("seg"),
        **provenance.device_attributes(),
        omit_empty_frames=True,
    )
    return seg, values

"""A job's findings -> the DICOM objects its pipeline asks for (``seg``, ``sr``, ``sc``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from node.encode.common import (
    Provenance,
    keep_source_patient_name,
    with_component_person_names,
)
from node.encode.sc import build_sc
from node.encode.seg import EncodeError, build_seg, segment_specs
from node.encode.sr import SegmentFinding, build_sr
from node.imaging.volume import Volume
from node.settings import Pipeline, SegmentSpec


def is_urgent(pipeline: Pipeline, findings: dict[str, dict[str, Any]]) -> bool:
    """Any urgency rule whose label is present with at least its volume."""
    return any(
        findings.get(rule.label, {}).get("present", False)
        and findings[rule.label]["volume_ml"] >= rule.min_volume_ml
        for rule in pipeline.urgent_if
    )


def encode_outputs(
    volume: Volume,
    labels: NDArray[np.uint8],
    label_names: tuple[str, ...],
    findings: dict[str, dict[str, Any]],
    pipeline: Pipeline,
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
    urgent: bool,
) -> dict[str, Dataset]:
    """The objects ``pipeline.outputs`` asks for; ``segments`` says what each label means
    (the model's declaration with the pipeline's overrides)."""
    if not volume.headers or any(s.frame_number for s in volume.slices):
        raise EncodeError("results are written for single-frame source series only")
    sources = [with_component_person_names(header) for header in volume.headers]
    outputs: dict[str, Dataset] = {}
    seg, values = build_seg(sources, labels, label_names, segments, provenance)
    if "seg" in pipeline.outputs:
        outputs["seg"] = seg
    if "sr" in pipeline.outputs:
        specs = segment_specs(label_names, values, segments)
        segment_findings = [
            SegmentFinding(
                number,
                label_names[value],
                spec,
                labels == value,
                findings[label_names[value]]["volume_ml"],
                findings[label_names[value]]["present"],
            )
            for number, (value, spec) in enumerate(zip(values, specs, strict=True), start=1)
        ]
        _, row_mm, col_mm = volume.spacing
        outputs["sr"] = build_sr(
            sources, seg, segment_findings, volume.voxels, (row_mm, col_mm), provenance, urgent
        )
    if "sc" in pipeline.outputs:
        # the slice where the most specific finding (highest label present) is largest
        focus = max(values)
        k = int(np.argmax((labels == focus).sum(axis=(1, 2))))
        colours = {value: segments[label_names[value]].color for value in values}
        caption = f"{provenance.model_name} {provenance.model_version}: " + ", ".join(
            f"{label_names[v]} {findings[label_names[v]]['volume_ml']:.1f} ml" for v in values
        )
        if urgent:
            caption = "URGENT - " + caption
        outputs["sc"] = build_sc(
            sources[k], volume.voxels[k], labels[k], colours, provenance, caption
        )
    return {
        kind: keep_source_patient_name(dataset, volume.headers[0])
        for kind, dataset in outputs.items()
    }

"""A job's findings -> the DICOM objects its pipeline asks for (``seg``, ``sr``, ``sc``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    MicroscopyBulkSimpleAnnotationsStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from scipy import ndimage

from node.domain import Findings
from node.encode.common import (
    Provenance,
    keep_source_patient_name,
    shallow_view,
    with_component_person_names,
)
from node.encode.report import ImageFinding, build_findings_sr
from node.encode.sc import build_sc, heat_layers, label_layers
from node.encode.seg import EncodeError, build_probability_seg, build_seg, segment_specs
from node.encode.sr import SegmentFinding, build_sr
from node.imaging.volume import Volume
from node.settings import Pipeline, SegmentSpec

# the SOP class of each result kind (highdicom's Segmentation, Comprehensive3DSR, SCImage)
RESULT_SOP_CLASSES = {"seg": SegmentationStorage, "sr": Comprehensive3DSRStorage,
                      "sc": SecondaryCaptureImageStorage,
                      "ann": MicroscopyBulkSimpleAnnotationsStorage}


def is_urgent(pipeline: Pipeline, findings: Findings,
              threshold: float = 0.5) -> bool:
    """Any urgency rule that holds: a label present with at least its volume (a radiograph's
    labels have no volume: only rules without a minimum volume apply to them), or a finding
    with at least its probability (by default the model's ``threshold``)."""
    for rule in pipeline.urgent_if:
        if rule.finding is not None:
            finding = findings.get(rule.finding)
            probability = finding.probability if finding is not None else None
            minimum = threshold if rule.min_probability is None else rule.min_probability
            if probability is not None and probability >= minimum:
                return True
        elif rule.label is not None:
            found = findings.get(rule.label)
            if found is not None and found.present and (
                    found.volume_ml or 0.0) >= rule.min_volume_ml:
                return True
    return False


def _radiograph_view(source: Dataset) -> Dataset:
    """A radiograph as highdicom should see it: a Pixel Spacing of zero (it happens) means
    unknown, so it is left out rather than copied into the results."""
    spacing = source.get("PixelSpacing")
    if spacing is None or all(float(v) > 0 for v in spacing):
        return source
    view = shallow_view(source)
    del view.PixelSpacing
    return view


def _sources(volume: Volume) -> list[Dataset]:
    """The source headers as highdicom should see them (see the two views above)."""
    sources = [with_component_person_names(header) for header in volume.headers]
    if volume.projection:
        sources = [_radiograph_view(source) for source in sources]
    return sources


def _image_sources(volume: Volume) -> list[Dataset]:
    """:func:`_sources` for results drawn on the images (SEG, SC): single-frame sources only."""
    if not volume.headers or any(s.frame_number for s in volume.slices):
        raise EncodeError("results are written for single-frame source series only")
    return _sources(volume)


def _with_orientation(seg: Dataset, volume: Volume) -> Dataset:
    """A radiograph's SEG carries the film's Patient Orientation (PS3.3 C.7.6.1: required
    when the image has no Image Plane module)."""
    if volume.projection and "PatientOrientation" in volume.headers[0]:
        seg.PatientOrientation = volume.headers[0].PatientOrientation
    return seg


def encode_findings_report(
    volume: Volume,
    findings: Findings,
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
    urgent: bool,
) -> dict[str, Dataset]:
    """The SR of image-level findings: a classification result, or the rule-out report of a
    segmentation that found nothing (every label absent)."""
    missing = [name for name in findings if name not in segments]
    if missing:
        raise EncodeError(f"neither the model nor the pipeline declares codes for "
                          f"{', '.join(missing)}")
    sources = _sources(volume)
    report = build_findings_sr(
        sources,
        [ImageFinding(name, segments[name], found.present, found.probability)
         for name, found in findings.items()],
        provenance, urgent,
    )
    return {"sr": keep_source_patient_name(report, volume.headers[0])}


def counted_values(label_names: tuple[str, ...], findings: Findings) -> list[int] | None:
    """Label values (> 0) with voxels (or pixels), from the findings' own counts, which the
    job took from the same label map: a pass over the map (35 M voxels for a CT) less.
    ``None`` when a finding carries no count."""
    values = []
    for value, name in enumerate(label_names[1:], start=1):
        finding = findings.get(name)
        count = None if finding is None else (
            finding.voxels if finding.voxels is not None else finding.pixels)
        if count is None:
            return None
        if count > 0:
            values.append(value)
    return values


def encode_outputs(
    volume: Volume,
    labels: NDArray[np.uint8],
    label_names: tuple[str, ...],
    findings: Findings,
    pipeline: Pipeline,
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
    urgent: bool,
) -> dict[str, Dataset]:
    """The objects ``pipeline.outputs`` asks for; ``segments`` says what each label means
    (the model's declaration with the pipeline's overrides)."""
    sources = _image_sources(volume)
    outputs: dict[str, Dataset] = {}
    seg, values = build_seg(sources, labels, label_names, segments, provenance,
                            counted_values(label_names, findings))
    seg = _with_orientation(seg, volume)
    if "seg" in pipeline.outputs:
        outputs["seg"] = seg
    # where each label lies: its masks and counts are taken within that box only
    boxes = ndimage.find_objects(labels, max_label=max(values, default=0))
    if "sr" in pipeline.outputs:
        specs = segment_specs(label_names, values, segments)
        segment_findings = [
            SegmentFinding(
                number,
                label_names[value],
                spec,
                labels[boxes[value - 1]] == value,
                findings[label_names[value]].volume_ml,
                findings[label_names[value]].present,
                boxes[value - 1],
            )
            for number, (value, spec) in enumerate(zip(values, specs, strict=True), start=1)
        ]
        _, row_mm, col_mm = volume.spacing
        outputs["sr"] = build_sr(
            sources, seg, segment_findings, volume.voxels,
            (row_mm, col_mm) if volume.pixel_spacing_known else None, provenance, urgent,
        )
    if "sc" in pipeline.outputs:
        # the slice where the most specific finding (highest label present) is largest
        focus = max(values)
        box = boxes[focus - 1]
        k = (box[0].start or 0) + int(np.argmax((labels[box] == focus).sum(axis=(1, 2))))
        colours = {value: segments[label_names[value]].color for value in values}
        caption = _caption(provenance, [
            f"{label_names[v]} {findings[label_names[v]].size_text()}" for v in values], urgent)
        outputs["sc"] = build_sc(
            sources[k], volume.voxels[k], label_layers(labels[k], colours), provenance, caption
        )
    return _as_source_patient(outputs, volume)


def _as_source_patient(outputs: dict[str, Dataset], volume: Volume) -> dict[str, Dataset]:
    return {
        kind: keep_source_patient_name(dataset, volume.headers[0])
        for kind, dataset in outputs.items()
    }


def _caption(provenance: Provenance, parts: list[str], urgent: bool) -> str:
    caption = f"{provenance.model_name} {provenance.model_version}: " + ", ".join(parts)
    return "URGENT - " + caption if urgent else caption


def encode_heatmap_outputs(
    volume: Volume,
    maps: NDArray[np.float32],
    findings: Findings,
    pipeline: Pipeline,
    segments: dict[str, SegmentSpec],
    provenance: Provenance,
    urgent: bool,
    threshold: float,
) -> dict[str, Dataset]:
    """A heatmap model's results: a FRACTIONAL (probability) SEG of its maps, the findings SR
    (present / absent and the highest probability of each), and a Secondary Capture of the
    image (slice) where the most probable finding peaks."""
    names = tuple(findings)
    sources = _image_sources(volume)
    outputs: dict[str, Dataset] = {}
    if "seg" in pipeline.outputs:
        outputs["seg"] = _with_orientation(
            build_probability_seg(sources, maps, names, segments, provenance)[0], volume)
    if "sr" in pipeline.outputs:
        outputs.update(encode_findings_report(volume, findings, segments, provenance, urgent))
    if "sc" in pipeline.outputs:
        top = int(np.argmax([findings[name].probability or 0.0 for name in names]))
        k = int(np.argmax(maps[top].reshape(maps.shape[1], -1).max(axis=1)))
        shown = [(maps[index][k], segment_specs(names, [index], segments)[0].color)
                 for index in range(len(names))]
        outputs["sc"] = build_sc(
            sources[k], volume.voxels[k], heat_layers(shown, threshold), provenance,
            _caption(provenance, [f"{n} {findings[n].size_text()}" for n in names], urgent),
        )
    return _as_source_patient(outputs, volume)

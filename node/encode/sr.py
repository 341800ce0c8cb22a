"""TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.16 TID 1500), with highdicom.

- Procedure reported: the imaging procedure (e.g. CT), not the algorithm; observer: the device.
- Per segment, a volumetric group (TID 1411) referencing the SEG segment: volume (ml), mean and
  maximum intensity (HU for CT), a qualitative *Finding: present/absent*, algorithm (TID 4019).
- Per segment also a planar group (TID 1410): the outline (SCOORD POLYLINE) and area of the
  segment's largest connected region (holes filled) on the slice where it is largest, so viewers
  that draw SR measurements show where it is. Both groups carry the segment's Tracking Unique
  Identifier (also the SEG segment's TrackingUID): they describe one tracked finding. Viewers
  that merge groups by tracking UID (OHIF) show one measurement per segment with its outline;
  OHIF 3.13 throws (and blanks its viewport) on a group left without image coordinates.
- Every group carries a qualitative evaluation *Priority: urgent / routine* (the triage flag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage
from skimage import measure as _measure

from node.encode.common import Provenance
from node.encode.seg import code
from node.settings import SegmentSpec

MILLILITRE = Code("ml", "UCUM", "milliliter")  # pydicom's code dictionary has no millilitre
SQUARE_MM = Code("mm2", "UCUM", "square millimeter")
HOUNSFIELD = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
NO_UNITS = Code("1", "UCUM", "no units")
PRIORITY = Code("272125009", "SCT", "Priority")
URGENT = Code("103391001", "SCT", "Urgent")
ROUTINE = Code("50811001", "SCT", "Routine")
PROCEDURES = {  # CID 100 Quantitative Diagnostic Imaging Procedures
    "CT": Code("25045-6", "LN", "CT unspecified body region"),
    "MR": Code("25056-3", "LN", "MRI unspecified body region"),
    "PT": Code("44136-0", "LN", "PET unspecified body region"),
    # LOINC 43468-8 "XR unspecified body region" joined CID 100 only recently; validators with
    # an older edition of PS3.16 (PixelMed as packaged) reject it, so radiographs use the
    # generic concept that every edition has
    "CR": Code("363679005", "SCT", "Imaging procedure"),
    "DX": Code("363679005", "SCT", "Imaging procedure"),
    "SM": Code("363679005", "SCT", "Imaging procedure"),  # a slide: no CID 100 concept
}
MAX_OUTLINE_POINTS = 256
measure: Any = _measure  # scikit-image is untyped


@dataclass(frozen=True)
class SegmentFinding:
    """One segment of the SEG and what was measured on it."""

    segment_number: int
    label: str
    spec: SegmentSpec
    mask: NDArray[np.bool_]  # within ``box`` of the source grid, [slice, row, column]
    volume_ml: float | None  # None for a radiograph: it has no volume
    present: bool
    box: tuple[slice, ...]  # where ``mask`` lies on the source grid

    def largest_slice(self, shape: tuple[int, ...]) -> tuple[int, NDArray[np.bool_]]:
        """The source slice where the segment is largest, and its whole mask there."""
        within = int(np.argmax(self.mask.sum(axis=(1, 2))))
        whole = np.zeros(shape[1:], dtype=bool)
        whole[self.box[1:]] = self.mask[within]
        return (self.box[0].start or 0) + within, whole


def _largest_region(mask_slice: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest 2-D connected region of a slice's mask, holes filled: what its outer
    outline encloses (a body segment that excludes the lungs still encloses them)."""
    regions = measure.label(mask_slice)
    largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    region: NDArray[np.bool_] = ndimage.binary_fill_holes(regions == largest)
    return region


def _outline(region: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Closed outline (column, row) of one region, at most 256 points (PS3.3 C.18.6 SCOORD:
    image coordinates with (0, 0) the top left corner of the top left pixel)."""
    padded = np.pad(region, 1)
    contour = max(measure.find_contours(padded.astype(np.float32), 0.5), key=len) - 1
    step = max(1, len(contour) // MAX_OUTLINE_POINTS)
    points = contour[::step][:, ::-1]  # (row, column) -> (column, row)
    points = np.clip(points, 0, np.array(region.shape[::-1]) - 1)
    return np.vstack([points, points[:1]]).astype(np.float32) + 0.5  # pixel centres, closed


def build_sr(
    sources: list[Dataset],
    seg: Dataset,
    findings: list[SegmentFinding],
    intensities: NDArray[np.float32],
    spacing_mm: tuple[float, float] | None,
    provenance: Provenance,
    urgent: bool,
) -> Dataset:
    """``spacing_mm`` (row, column) is None when the images do not say it: no areas then.
    A finding without a volume (a radiograph) gets only the planar group."""
    reference = sources[0]
    modality = str(reference.get("Modality", ""))
    intensity_unit = HOUNSFIELD if modality == "CT" else NO_UNITS
    algorithm = provenance.sr_algorithm()

    def measured(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
        return hd.sr.Measurement(name, value, unit, algorithm_id=algorithm)

    groups: list[Any] = []
    # the triage flag travels with every finding, so viewers list it beside each measurement
    priority = hd.sr.QualitativeEvaluation(PRIORITY, URGENT if urgent else ROUTINE)
    for finding in findings:
        tracking = hd.sr.TrackingIdentifier(
            uid=provenance.uid(f"tracking-{finding.label}"),
            identifier=f"{provenance.model_name} {finding.label}",
        )
        finding_type = code(finding.spec.type)
        presence = hd.sr.QualitativeEvaluation(
            codes.DCM.Finding, codes.SCT.Present if finding.present else codes.SCT.Absent
        )
        evaluations = [presence, priority]
        values = intensities[finding.box][finding.mask]
        if finding.volume_ml is not None:
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg.SOPClassUID,
                        sop_instance_uid=seg.SOPInstanceUID,
                        segment_number=finding.segment_number,
                        source_series=hd.sr.SourceSeriesForSegmentation(
                            provenance.series_instance_uid),
                    ),
                    finding_type=finding_type,
                    finding_category=code(finding.spec.category),
                    algorithm_id=algorithm,
                    measurements=[
                        measured(codes.SCT.Volume, round(finding.volume_ml, 3), MILLILITRE),
                        measured(codes.SCT.Mean, round(float(values.mean()), 2), intensity_unit),
                        measured(codes.SCT.Maximum, round(float(values.max()), 2), intensity_unit),
                    ],
                    qualitative_evaluations=evaluations,
                )
            )
        largest, largest_mask = finding.largest_slice(intensities.shape)
        region = _largest_region(largest_mask)
        source = sources[largest]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,  # the same finding, seen on one slice
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=_outline(region),
                    source_image=hd.sr.SourceImageForRegion(
                        referenced_sop_class_uid=source.SOPClassUID,
                        referenced_sop_instance_uid=source.SOPInstanceUID,
                    ),
                ),
                finding_type=finding_type,
                finding_category=code(finding.spec.category),
                algorithm_id=algorithm,
                measurements=[
                    measured(
                        codes.SCT.Area,
                        # enclosed by the outline, which is what the group describes
                        round(float(region.sum()) * spacing_mm[0] * spacing_mm[1], 2),
                        SQUARE_MM,
                    )
                ] if spacing_mm else [
                    measured(codes.SCT.Mean, round(float(values.mean()), 2), intensity_unit),
                ],
                qualitative_evaluations=evaluations,
            )
        )
    return measurement_report(sources, [seg], groups, provenance)


def measurement_report(sources: list[Dataset], other_evidence: list[Dataset], groups: list[Any],
                       provenance: Provenance) -> Dataset:
    """The TID 1500 document around ``groups``: the device as observer, the imaging procedure
    of the source modality, the sources (and e.g. the SEG) as evidence."""
    modality = str(sources[0].get("Modality", ""))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=provenance.uid("device"),
            name=provenance.model_name,
            manufacturer_name="ainode",
            model_name=provenance.model_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURES.get(modality, PROCEDURES["CT"]),
        imaging_measurements=groups,
    )
    return cast(
        Dataset,
        hd.sr.Comprehensive3DSR(
            evidence=[*sources, *other_evidence],
            content=report,
            is_complete=True,
            is_final=False,
            is_verified=False,
            **provenance.instance_attributes("sr"),
            **provenance.device_attributes(),
        ),
    )

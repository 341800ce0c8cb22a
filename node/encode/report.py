"""Image-level findings in a TID 1500 Measurement Report (PS3.16 TID 1501 groups, no region):
a classification model's findings, each present or absent against the model's threshold with
its probability (DCM 122157 "Probability"), and the rule-out report of a job that found
nothing, so that a worklist can move normal studies down.

Every group carries *Finding: present / absent* and *Priority: urgent / routine*, as the
segmentation SR does, and references the source images it was derived from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.encode.common import Provenance
from node.encode.seg import code
from node.encode.sr import PRIORITY, ROUTINE, URGENT, measurement_report
from node.settings import SegmentSpec

PROBABILITY = Code("122157", "DCM", "Probability")
UNITLESS = Code("1", "UCUM", "no units")


@dataclass(frozen=True)
class ImageFinding:
    """One finding about the whole image: present or not, and the model's probability."""

    label: str
    spec: SegmentSpec
    present: bool
    probability: float | None = None  # None for a segmentation model's absent label


def build_findings_sr(sources: list[Dataset], findings: list[ImageFinding],
                      provenance: Provenance, urgent: bool) -> Dataset:
    algorithm = provenance.sr_algorithm()
    priority = hd.sr.QualitativeEvaluation(PRIORITY, URGENT if urgent else ROUTINE)
    references = [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        )
        for source in sources
    ]
    groups: list[Any] = []
    for finding in findings:
        measurements = [] if finding.probability is None else [
            hd.sr.Measurement(PROBABILITY, round(finding.probability, 4), UNITLESS,
                              algorithm_id=algorithm)
        ]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=provenance.uid(f"tracking-{finding.label}"),
                identifier=f"{provenance.model_name} {finding.label}",
            ),
            finding_type=code(finding.spec.type),
            finding_category=code(finding.spec.category),
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    codes.DCM.Finding,
                    codes.SCT.Present if finding.present else codes.SCT.Absent),
                priority,
            ],
            source_images=references,
        ))
    return measurement_report(sources, [], groups, provenance)

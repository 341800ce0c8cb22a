"""The FHIR R4 notification: a transaction Bundle with a DiagnosticReport (status
*preliminary*: an AI result, not for primary diagnosis) whose results are one Observation per
finding, referencing the ImagingStudy by its Study Instance UID. Built with the fhir.resources
models (R4B, the R4 wire format), so what is sent is valid by construction."""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from node.domain import Finding
from node.egress.notice import NOTICE, Notice

DICOM_UID_SYSTEM = "urn:dicom:uid"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
PRESENT = Coding(system=SNOMED, code="52101004", display="Present")
ABSENT = Coding(system=SNOMED, code="2667000", display="Absent")
URGENT = Coding(system=SNOMED, code="103391001", display="Urgent")
IMAGING_REPORT = Coding(system="http://loinc.org", code="18748-4",
                        display="Diagnostic imaging study")
IMAGING = Coding(system="http://terminology.hl7.org/CodeSystem/observation-category",
                 code="imaging")
RADIOLOGY = Coding(system="http://terminology.hl7.org/CodeSystem/v2-0074", code="RAD")
# (finding key, component name, UCUM unit)
MEASURES = (("volume_ml", "Volume", "mL"), ("area_mm2", "Area", "mm2"),
            ("probability", "Probability", "1"))


def _measure(key: str, value: float) -> float:
    return round(float(value), 4) if key == "probability" else float(value)


def _observation(notice: Notice, name: str, finding: Finding) -> Observation:
    components = [
        ObservationComponent(code=CodeableConcept(text=text), valueQuantity=Quantity(
            value=_measure(key, getattr(finding, key)), unit=unit, system=UCUM, code=unit))
        for key, text, unit in MEASURES if getattr(finding, key) is not None]
    return Observation(
        status="preliminary", category=[CodeableConcept(coding=[IMAGING])],
        code=CodeableConcept(text=name),
        subject=Reference(identifier=Identifier(value=notice.patient_id)),
        issued=notice.issued,
        valueCodeableConcept=CodeableConcept(
            coding=[PRESENT if finding.present else ABSENT]),
        note=[Annotation(text=f"{notice.model} {notice.model_version}; {NOTICE}")],
        component=components or None)


def _urn(name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, name)}"


def fhir_bundle(notice: Notice) -> dict[str, Any]:
    """The transaction Bundle as JSON (``urn:uuid`` references resolved by the server)."""
    observations = [
        BundleEntry(fullUrl=_urn(f"{notice.report_uid}/{name}"),
                    resource=_observation(notice, name, finding),
                    request=BundleEntryRequest(method="POST", url="Observation"))
        for name, finding in notice.findings.items()]
    report = DiagnosticReport(
        status="preliminary",
        identifier=[Identifier(system=DICOM_UID_SYSTEM, value=f"urn:oid:{notice.report_uid}")],
        category=[CodeableConcept(coding=[RADIOLOGY])],
        code=CodeableConcept(coding=[IMAGING_REPORT], text=f"AI result: {notice.pipeline}"),
        subject=Reference(identifier=Identifier(value=notice.patient_id)),
        issued=notice.issued,
        imagingStudy=[Reference(identifier=Identifier(
            system=DICOM_UID_SYSTEM, value=f"urn:oid:{notice.study_uid}"))],
        result=[Reference(reference=entry.fullUrl) for entry in observations],
        conclusion=notice.summary,
        conclusionCode=[CodeableConcept(coding=[URGENT])] if notice.urgent else None)
    bundle = Bundle(type="transaction", entry=[
        *observations,
        BundleEntry(fullUrl=_urn(notice.report_uid), resource=report,
                    request=BundleEntryRequest(method="POST", url="DiagnosticReport"))])
    return bundle.model_dump(mode="json", exclude_none=True, by_alias=True)

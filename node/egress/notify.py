"""Notifications of results for triage (``notify[]``), sent from the outbox like results, so
they are durable, retried with backoff and dead-lettered with their reason:

- a JSON webhook, signed with HMAC-SHA256 over the body (``X-Ainode-Signature:
  sha256=<hex>``) when a secret is set;
- FHIR R4: a transaction Bundle with a DiagnosticReport (status *preliminary*: an AI result,
  not for primary diagnosis) whose results are one Observation per finding, referencing the
  ImagingStudy by its Study Instance UID;
- HL7 v2.5 ORU^R01 over MLLP to a RIS, one OBX per finding; the RIS's ACK decides (AA sent,
  AE retried, AR dead).

What is announced comes from the job store (pipeline, model and version, findings, urgency)
and the result's own header (patient, accession, study): the clinical channel carries them;
logs never do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import pydicom
import requests

from node.domain import Outcome
from node.settings import Notification
from node.store.jobs import JobStore
from node.store.outbox import OutboxItem
from node.store.queue import JobQueue

NOTICE = "not for primary diagnosis"
SIGNATURE_HEADER = "X-Ainode-Signature"
MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
DICOM_UID_SYSTEM = "urn:dicom:uid"
SNOMED = "http://snomed.info/sct"
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent"}
IMAGING_REPORT = {"system": "http://loinc.org", "code": "18748-4",
                  "display": "Diagnostic imaging study"}


@dataclass(frozen=True)
class Notice:
    """One result to announce."""

    item_id: int
    urgent: bool
    study_uid: str
    series_uid: str
    accession: str
    patient_id: str
    patient_name: str
    pipeline: str
    model: str
    model_version: str
    findings: dict[str, dict[str, Any]]
    report_uid: str
    issued: dt.datetime

    @property
    def summary(self) -> str:
        present = [name for name, finding in self.findings.items() if finding.get("present")]
        found = ", ".join(present) if present else "nothing found"
        return (f"{'URGENT: ' if self.urgent else ''}{self.model} {self.model_version}: "
                f"{found} ({NOTICE})")


def notice_for(store: JobStore, item: OutboxItem, job_id: int) -> Notice:
    """The notice of outbox ``item`` from its job and its result file's header."""
    origin = JobQueue(store).origin(job_id)
    if origin is None:
        raise LookupError(f"job {job_id} is gone")
    pipeline, model, result, series_uid, study_uid = origin
    summary = json.loads(result) if result else {}
    header = pydicom.dcmread(item.path, stop_before_pixels=True)
    return Notice(
        item_id=item.id, urgent=bool(summary.get("urgent")), study_uid=study_uid,
        series_uid=series_uid, accession=str(header.get("AccessionNumber", "") or ""),
        patient_id=str(header.get("PatientID", "") or ""),
        patient_name=str(header.get("PatientName", "") or ""), pipeline=pipeline,
        model=model, model_version=str(summary.get("model_version", "")),
        findings=summary.get("labels", {}), report_uid=item.sop_instance_uid,
        issued=dt.datetime.now(dt.UTC))


# -- payloads ------------------------------------------------------------------------------
def webhook_body(notice: Notice) -> dict[str, Any]:
    return {
        "event": "ainode.result", "urgent": notice.urgent, "summary": notice.summary,
        "notice": NOTICE, "study_instance_uid": notice.study_uid,
        "series_instance_uid": notice.series_uid, "accession_number": notice.accession,
        "patient_id": notice.patient_id, "pipeline": notice.pipeline, "model": notice.model,
        "model_version": notice.model_version, "report_sop_instance_uid": notice.report_uid,
        "findings": [{"label": name, **finding} for name, finding in notice.findings.items()],
        "issued": notice.issued.isoformat(),
    }


def _observation(notice: Notice, name: str, finding: dict[str, Any]) -> dict[str, Any]:
    components = []
    if finding.get("volume_ml") is not None:
        components.append({"code": {"text": "Volume"}, "valueQuantity": {
            "value": finding["volume_ml"], "unit": "mL", "system": "http://unitsofmeasure.org",
            "code": "mL"}})
    if finding.get("area_mm2") is not None:
        components.append({"code": {"text": "Area"}, "valueQuantity": {
            "value": finding["area_mm2"], "unit": "mm2", "system": "http://unitsofmeasure.org",
            "code": "mm2"}})
    if finding.get("probability") is not None:
        components.append({"code": {"text": "Probability"}, "valueQuantity": {
            "value": round(float(finding["probability"]), 4), "unit": "1",
            "system": "http://unitsofmeasure.org", "code": "1"}})
    observation: dict[str, Any] = {
        "resourceType": "Observation", "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                  "observation-category", "code": "imaging"}]}],
        "code": {"text": name},
        "subject": {"identifier": {"value": notice.patient_id}},
        "issued": notice.issued.isoformat(),
        "valueCodeableConcept": {"coding": [PRESENT if finding.get("present") else ABSENT]},
        "note": [{"text": f"{notice.model} {notice.model_version}; {NOTICE}"}],
    }
    if components:
        observation["component"] = components
    return observation


def fhir_bundle(notice: Notice) -> dict[str, Any]:
    """A transaction Bundle: the Observations and the DiagnosticReport that results in them
    (FHIR R4; ``urn:uuid`` references resolved by the server)."""
    entries = []
    for name, finding in notice.findings.items():
        full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, f'{notice.report_uid}/{name}')}"
        entries.append({"fullUrl": full_url, "resource": _observation(notice, name, finding),
                        "request": {"method": "POST", "url": "Observation"}})
    report = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{notice.report_uid}"}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD"}]}],
        "code": {"coding": [IMAGING_REPORT], "text": f"AI result: {notice.pipeline}"},
        "subject": {"identifier": {"value": notice.patient_id}},
        "issued": notice.issued.isoformat(),
        "imagingStudy": [{"identifier": {"system": DICOM_UID_SYSTEM,
                                         "value": f"urn:oid:{notice.study_uid}"}}],
        "result": [{"reference": entry["fullUrl"]} for entry in entries],
        "conclusion": notice.summary,
    }
    if notice.urgent:
        report["conclusionCode"] = [{"coding": [{"system": SNOMED, "code": "103391001",
                                                 "display": "Urgent"}]}]
    entries.append({"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, notice.report_uid)}",
                    "resource": report,
                    "request": {"method": "POST", "url": "DiagnosticReport"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _hl7_text(value: object) -> str:
    """A field value with HL7's delimiters escaped (HL7 v2.5 2.7)."""
    text = str(value)
    for raw, escaped in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"),
                         ("~", "\\R\\"), ("\r", " "), ("\n", " ")):
        text = text.replace(raw, escaped)
    return text


def hl7_message(notice: Notice, target: Notification, sending_application: str) -> str:
    """ORU^R01 (HL7 v2.5 7.3.1): MSH, PID, OBR (priority S urgent / R routine, result
    status P preliminary), one OBX per finding (CWE present/absent, NM size or probability),
    NTE with the model and the notice. The control ID is the outbox item's, so a re-sent
    message can be recognised by the RIS."""
    when = notice.issued.strftime("%Y%m%d%H%M%S")
    e = _hl7_text
    segments = [
        f"MSH|^~\\&|{e(sending_application)}|{e(target.sending_facility)}|"
        f"{e(target.receiving_application)}|{e(target.receiving_facility)}|{when}||"
        f"ORU^R01^ORU_R01|AINODE{notice.item_id}|P|2.5",
        f"PID|1||{e(notice.patient_id)}||{e(notice.patient_name)}",
        f"OBR|1||{e(notice.accession)}|18748-4^Diagnostic imaging study^LN|"
        f"{'S' if notice.urgent else 'R'}||{when}|||||||||||||||{when}|||P",
    ]
    number = 0
    for name, finding in notice.findings.items():
        number += 1
        state = "52101004^Present^SCT" if finding.get("present") else "2667000^Absent^SCT"
        segments.append(f"OBX|{number}|CWE|^{e(name)}^L||{state}||||||P")
        for key, unit in (("volume_ml", "mL"), ("area_mm2", "mm2"), ("probability", "1")):
            if finding.get(key) is not None:
                number += 1
                segments.append(f"OBX|{number}|NM|^{e(name)} {key.split('_')[0]}^L||"
                                f"{finding[key]}|{unit}^{unit}^UCUM|||||P")
    segments.append(f"NTE|1||{e(notice.summary)}; study {e(notice.study_uid)}")
    return "\r".join(segments) + "\r"


# -- channels ------------------------------------------------------------------------------
def _http_outcome(code: int) -> Outcome:
    if code < 300:
        return Outcome.sent()
    if code >= 500 or code in (401, 403, 408, 429):
        return Outcome.retry(f"unavailable: HTTP {code}")
    return Outcome.dead(f"refused: HTTP {code}")


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Outcome:
    try:
        answer = requests.post(url, data=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        return Outcome.retry(f"unavailable: {exc.__class__.__name__}")
    return _http_outcome(answer.status_code)


def send_webhook(target: Notification, notice: Notice, timeout_s: float) -> Outcome:
    body = json.dumps(webhook_body(notice), sort_keys=True).encode()
    headers = {"Content-Type": "application/json"}
    secret = target.secret_value("secret")
    if secret:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers[SIGNATURE_HEADER] = f"sha256={digest}"
    return _post(str(target.webhook), body, headers, timeout_s)


def send_fhir(target: Notification, notice: Notice, timeout_s: float) -> Outcome:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    token = target.secret_value("token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(fhir_bundle(notice)).encode()
    return _post(str(target.fhir).rstrip("/"), body, headers, timeout_s)


def send_hl7(target: Notification, notice: Notice, timeout_s: float,
             sending_application: str) -> Outcome:
    host, _, port = str(target.hl7).rpartition(":")
    message = hl7_message(notice, target, sending_application)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sock.sendall(MLLP_START + message.encode("utf-8") + MLLP_END)
            answer = b""
            while MLLP_END not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    return Outcome.retry(
                        "unavailable: the RIS closed the connection without an ACK")
                answer += chunk
    except OSError as exc:
        return Outcome.retry(f"unavailable: {exc.__class__.__name__}")
    acknowledgement = _ack_code(answer)
    if acknowledgement in ("AA", "CA"):
        return Outcome.sent()
    if acknowledgement in ("AR", "CR"):
        return Outcome.dead(f"refused: HL7 ACK {acknowledgement}")
    return Outcome.retry(f"unavailable: HL7 ACK {acknowledgement or 'unreadable'}")


def _ack_code(answer: bytes) -> str:
    text = answer.strip(MLLP_START + MLLP_END + b"\r\n").decode("utf-8", "replace")
    for segment in text.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "MSA" and len(fields) > 1:
            return fields[1]
    return ""


class Notifier:
    """Sends one notification target's outbox items, an :class:`Outcome` for each."""

    def __init__(self, store: JobStore, sending_application: str) -> None:
        self._store = store
        self._sending_application = sending_application

    def send(self, target: Notification, items: list[OutboxItem],
             timeout_s: float) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for item in items:
            try:
                if item.job_id is None:
                    raise LookupError("it names no job")
                notice = notice_for(self._store, item, item.job_id)
            except (LookupError, OSError, ValueError) as exc:
                outcomes[item.path] = Outcome.dead(
                    f"refused: cannot build the notification ({exc})")
                continue
            if target.channel == "webhook":
                outcomes[item.path] = send_webhook(target, notice, timeout_s)
            elif target.channel == "fhir":
                outcomes[item.path] = send_fhir(target, notice, timeout_s)
            else:
                outcomes[item.path] = send_hl7(target, notice, timeout_s,
                                               self._sending_application)
        return outcomes

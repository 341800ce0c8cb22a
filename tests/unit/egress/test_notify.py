"""Notification payloads, checked by independent parsers: FHIR resources validated with
the fhir.resources R4B models, HL7 parsed with python-hl7, the webhook's HMAC recomputed."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path

import hl7
import pytest
import yaml
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from node.domain import Finding
from node.egress.fhir import fhir_bundle
from node.egress.hl7v2 import hl7_message
from node.egress.notice import Notice
from node.egress.notify import webhook_body
from node.settings import Notification, Settings

NOTICE = Notice(
    item_id=42, urgent=True, study_uid="1.2.3.4", series_uid="1.2.3.4.5", accession="ACC|9",
    patient_id="PAT^1", patient_name="Doe^Jane", pipeline="cxr-mass", model="cxr_mass_cls",
    model_version="1.0.0",
    findings={"mass": Finding(present=True, probability=0.93),
              "lungs": Finding(present=True, volume_ml=812.5, voxels=10),
              "effusion": Finding(present=False, probability=0.1)},
    report_uid="1.2.3.4.6", issued=dt.datetime(2026, 11, 29, 8, 30, tzinfo=dt.UTC))


def test_fhir_bundle_is_valid_r4_and_references_resolve() -> None:
    bundle = Bundle.model_validate(fhir_bundle(NOTICE))
    assert bundle.type == "transaction"
    resources = [entry.resource for entry in bundle.entry]
    observations = [r for r in resources if r.get_resource_type() == "Observation"]
    (report,) = [r for r in resources if r.get_resource_type() == "DiagnosticReport"]
    DiagnosticReport.model_validate(report.model_dump())
    for observation in observations:
        Observation.model_validate(observation.model_dump())
    assert report.status == "preliminary" and "not for primary diagnosis" in report.conclusion
    assert report.imagingStudy[0].identifier.value == "urn:oid:1.2.3.4"
    urls = {entry.fullUrl for entry in bundle.entry}
    assert {reference.reference for reference in report.result} <= urls
    assert len(observations) == 3
    present = {o.code.text: o.valueCodeableConcept.coding[0].display for o in observations}
    assert present == {"mass": "Present", "lungs": "Present", "effusion": "Absent"}
    assert report.conclusionCode[0].coding[0].code == "103391001"  # Urgent


def test_hl7_oru_r01_parses_with_escaped_fields() -> None:
    target = Notification(name="ris", hl7="ris:2575", receiving_application="RIS")
    message = hl7.parse(hl7_message(NOTICE, target, "AINODE"))
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(message.segment("MSH")[10]) == "AINODE42" and str(message.segment("MSH")[12]) \
        == "2.5"
    assert message.unescape(str(message.segment("PID")[3])) == "PAT^1"  # escaped, round-trips
    obr = message.segment("OBR")
    assert message.unescape(str(obr[3])) == "ACC|9" and str(obr[5]) == "S"
    assert str(obr[25]) == "P"  # result status: preliminary
    observations = message.segments("OBX")
    states = [str(o[5]) for o in observations if str(o[2]) == "CWE"]
    assert states == ["52101004^Present^SCT", "52101004^Present^SCT", "2667000^Absent^SCT"]
    numbers = [str(o[5]) for o in observations if str(o[2]) == "NM"]
    assert numbers == ["0.93", "812.5", "0.1"]
    assert "not for primary diagnosis" in str(message.segment("NTE")[3])
    # and valid by the v2.5 message structure (hl7apy's strict validation)
    parse_message(hl7_message(NOTICE, target, "AINODE").strip("\r"),
                  validation_level=VALIDATION_LEVEL.STRICT).validate()


def test_webhook_body_carries_the_findings_and_notice() -> None:
    body = webhook_body(NOTICE)
    assert body["urgent"] is True and body["notice"] == "not for primary diagnosis"
    assert body["summary"].startswith("URGENT: cxr_mass_cls 1.0.0: mass, lungs")
    assert {f["label"] for f in body["findings"]} == {"mass", "lungs", "effusion"}
    encoded = json.dumps(body, sort_keys=True).encode()
    signature = hmac.new(b"k", encoded, hashlib.sha256).hexdigest()
    assert len(signature) == 64


def test_a_notification_names_one_channel_and_its_key_on_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of webhook, fhir, hl7"):
        Notification(name="x", webhook="http://a", hl7="b:1")
    with pytest.raises(ValueError, match="give host:port"):
        Notification(name="x", hl7="ris")
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Notifications for triage", 1)[1]
    snippet = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    environment = {"AINODE_WEBHOOK_SECRET": "s", "AINODE_FHIR_TOKEN": "t"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        settings = Settings.model_validate(snippet)
    channels = [(n.name, n.channel, n.every_result) for n in settings.notify]
    assert channels == [("triage-webhook", "webhook", False), ("fhir", "fhir", False),
                        ("ris", "hl7", True)]
    assert settings.notify[0].secret_value("secret") == "s"

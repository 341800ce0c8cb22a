"""DICOM audit messages (PS3.15 A.5) built from audit lines, their syslog framing (RFC 5424),
forwarding from the job store, and the audit of starts and configuration changes."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from node.audit.atna import AuditForwarder, audit_message, syslog_frame
from node.audit.trail import record_start, record_stop
from node.domain import AuditEvent
from node.settings import Settings
from node.store.jobs import AuditLine

STUDY, SERIES = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2"
SETTINGS = Settings.model_validate({"audit": {"syslog": "127.0.0.1:6514",
                                              "enterprise_site": "St. Elsewhere"}})


def _parse(line: AuditLine) -> ET.Element:
    xml = audit_message(line, SETTINGS)
    assert xml is not None
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    return ET.fromstring(xml)


def _code(element: ET.Element | None) -> tuple[str, str]:
    assert element is not None
    return element.get("csd-code", ""), element.get("codeSystemName", "")


def test_instances_received_are_a_transfer_from_the_caller_to_this_node() -> None:
    message = _parse(AuditLine(7, 1_764_000_000.25, "STORESCU", "association released",
                               "from 10.1.2.3: 3 instance(s) stored", "10.1.2.3",
                               (("study", STUDY), ("series", SERIES)), 0))
    event = message.find("EventIdentification")
    assert event is not None
    assert event.get("EventActionCode") == "C" and event.get("EventOutcomeIndicator") == "0"
    assert event.get("EventDateTime") == "2025-11-24T16:00:00.250+00:00"
    assert _code(event.find("EventID")) == ("110104", "DCM")
    caller, node = message.findall("ActiveParticipant")
    assert caller.attrib == {"UserID": "STORESCU", "UserIsRequestor": "true",
                             "NetworkAccessPointID": "10.1.2.3",
                             "NetworkAccessPointTypeCode": "2"}
    assert _code(caller.find("RoleIDCode")) == ("110153", "DCM")  # source
    assert node.get("UserID") == "AINODE" and node.get("UserIsRequestor") == "false"
    assert _code(node.find("RoleIDCode")) == ("110152", "DCM")  # destination
    source = message.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "AINODE"
    assert source.get("AuditEnterpriseSiteID") == "St. Elsewhere"
    assert _code(source.find("AuditSourceTypeCode"))[0] == "4"
    (study,) = message.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")
            ) == ("2", "3")
    assert _code(study.find("ParticipantObjectIDTypeCode")) == ("110180", "DCM")
    (detail,) = study.findall("ParticipantObjectDetail")
    assert base64.b64decode(detail.get("value", "")).decode() == SERIES
    # the schema's order: event, participants, source, objects
    assert [child.tag for child in message] == [
        "EventIdentification", "ActiveParticipant", "ActiveParticipant",
        "AuditSourceIdentification", "ParticipantObjectIdentification"]


@pytest.mark.parametrize(("action", "outcome", "event_id", "type_code", "action_code"), [
    ("node started", 0, "110100", "110120", "E"),
    ("node stopped", 0, "110100", "110121", "E"),
    ("process ended", 8, "110100", "110121", "E"),
    ("association rejected", 4, "110113", "110126", "E"),
    ("authentication failed", 4, "110114", "110122", "E"),
    ("configuration changed", 0, "110113", "110131", "E"),
    ("requeue jobs", 0, "110113", "110132", "E"),
    ("job done", 0, "110103", None, "C"),
    ("job failed", 8, "110103", None, "C"),
    ("results sent", 0, "110104", None, "C"),
    ("delivery given up", 8, "110104", None, "C"),
    ("deleted", 0, "110105", None, "D"),
    ("peer added", 0, "110113", "110131", "E"),
    ("peer changed", 0, "110113", "110131", "E"),
    ("peer removed", 0, "110113", "110131", "E"),
    ("peer reset", 0, "110113", "110131", "E"),
    ("job cancelled", 0, "110113", "110132", "E"),
    ("series completed", 0, "110113", "110132", "E"),
    ("study retrieved", 0, "110104", None, "C"),
    ("study retrieve failed", 4, "110104", None, "C"),
])
def test_each_action_has_its_dicom_event(action: str, outcome: int, event_id: str,
                                         type_code: str | None, action_code: str) -> None:
    message = _parse(AuditLine(1, 1_764_000_000.0, "node", action, "what happened", "",
                               (("study", STUDY),), outcome))
    event = message.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID"))[0] == event_id
    assert event.get("EventActionCode") == action_code
    assert event.get("EventOutcomeIndicator") == str(outcome)
    types = event.findall("EventTypeCode")
    assert [t.get("csd-code") for t in types] == ([type_code] if type_code else [])
    description = event.find("EventOutcomeDescription")
    assert (description is not None and description.text == "what happened") == bool(outcome)


@pytest.mark.parametrize("event", list(AuditEvent), ids=lambda e: e.name)
def test_every_audit_event_is_a_dicom_audit_message(event: AuditEvent) -> None:
    """No event the node records stays behind in its own trail: each is a PS3.15 A.5
    message with an EventID from DCM."""
    message = _parse(AuditLine(1, 1_764_000_000.0, "operator", event, "what happened",
                               "192.0.2.7", (("study", STUDY),), 0))
    event_id = _code(message.find("EventIdentification/EventID"))
    assert event_id[1] == "DCM" and event_id[0].startswith("1101")


def test_results_sent_name_the_destination_and_an_echo_association_sends_nothing() -> None:
    message = _parse(AuditLine(1, 0.0, "node", "results sent", "3 object(s) to PACS",
                               "pacs.example", (("peer", "ORTHANC"), ("study", STUDY)), 0))
    participants = {p.get("UserID"): p for p in message.findall("ActiveParticipant")}
    assert _code(participants["ORTHANC"].find("RoleIDCode"))[0] == "110152"
    assert participants["AINODE"].get("UserIsRequestor") == "true"
    assert _code(participants["AINODE"].find("RoleIDCode"))[0] == "110153"
    echo = AuditLine(2, 0.0, "ECHOSCU", "association released", "0 stored", "10.0.0.1", (), 0)
    assert audit_message(echo, SETTINGS) is None
    assert audit_message(AuditLine(3, 0.0, "x", "no such action", "", "", (), 0),
                         SETTINGS) is None


def test_a_syslog_frame_is_rfc_5424_with_the_xml_as_its_message() -> None:
    frame = syslog_frame(b"<?xml version='1.0'?><AuditMessage/>", 8, 1_764_000_000.5)
    header = re.match(rb"<(\d+)>1 (\S+) (\S+) ainode (\d+) IHE\+RFC-3881 - \xef\xbb\xbf", frame)
    assert header is not None, frame
    assert int(header[1]) == 10 * 8 + 3  # authpriv, error for a serious failure
    assert header[2] == b"2025-11-24T16:00:00.500Z"
    assert frame.endswith(b"<AuditMessage/>")
    assert int(re.match(rb"<(\d+)>", syslog_frame(b"x", 0, 0.0))[1]) == 85  # type: ignore[index]


class _Collector:
    def __init__(self, fail_first: int = 0) -> None:
        self.frames: list[bytes] = []
        self.fail_first = fail_first

    def send(self, frame: bytes) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionRefusedError("collector down")
        self.frames.append(frame)

    def close(self) -> None:
        pass


def test_lines_are_forwarded_once_in_order_and_wait_while_the_collector_is_down(
        new_store: Any) -> None:
    store = new_store()
    for index in range(3):
        store.audit("STORESCU", "association released", f"batch {index}", 100.0 + index,
                    address="127.0.0.1", objects=[("study", f"1.2.{index}")])
    store.audit("ECHOSCU", "association released", "nothing stored", 104.0)  # no message
    collector = _Collector(fail_first=1)
    forwarder = AuditForwarder(SETTINGS, store, collector)  # type: ignore[arg-type]
    assert forwarder.forward() is False  # the collector is down: the lines wait
    assert collector.frames == []
    assert store.query("SELECT COUNT(*) FROM audit WHERE forwarded=0") == [(4,)]
    forwarder._not_before = 0.0  # the backoff has passed
    forwarder.forward()
    studies = [re.search(rb'ParticipantObjectID="([^"]+)"', f)[1]  # type: ignore[index]
               for f in collector.frames]
    assert studies == [b"1.2.0", b"1.2.1", b"1.2.2"]
    forwarder.forward()
    assert len(collector.frames) == 3  # nothing twice
    assert store.query("SELECT COUNT(*) FROM audit WHERE forwarded=1") == [(4,)]


def test_a_claimed_line_is_skipped_by_another_forwarder_until_its_lease_ends(
        new_store: Any) -> None:
    store = new_store()
    store.audit("node", "job done", "job 1", 10.0, objects=[("study", "1.2.3")])
    assert [line.detail for line in store.claim_audit_lines(now=1000.0)] == ["job 1"]
    assert store.claim_audit_lines(now=1030.0) == []  # leased to the first
    assert [line.detail for line in store.claim_audit_lines(now=1061.0)] == ["job 1"]


def test_starts_stops_and_configuration_changes_are_audited(new_store: Any) -> None:
    store = new_store()
    record_start(store, Settings(), "receiver+worker+sender")
    record_start(store, Settings(), "receiver+worker+sender")  # same configuration
    changed = Settings.model_validate({"series": {"quiet_seconds": 9},
                                       "peers": [{"name": "PACS", "ae_title": "ORTHANC",
                                                  "host": "pacs", "port": 4242}]})
    record_start(store, changed, "receiver+worker+sender")
    record_stop(store, changed, "receiver+worker+sender")
    actions = [(line.action, line.detail) for line in reversed(store.audit_lines())]
    assert [a for a, _ in actions] == ["node started", "configuration changed", "node started",
                                       "node started", "configuration changed", "node stopped"]
    first_change, second_change = (d for a, d in actions if a == "configuration changed")
    assert "(new ->" in first_change and "series" in first_change
    assert second_change.startswith("sections peers (")
    assert ", series (" in second_change and "node (" not in second_change
    assert "4242" not in second_change and "ORTHANC" not in second_change  # digests only

"""The HL7 v2.5 notification for a RIS: ORU^R01 (HL7 v2.5 7.3.1), built on hl7apy's message
structure (MSH, the PATIENT_RESULT group with PID, the ORDER_OBSERVATION group with OBR and one
OBSERVATION per OBX, the notice as the last observation's NTE), so segments sit where the
standard puts them. hl7apy does not escape delimiters in values: :func:`escaped` does (HL7
v2.5 2.7) before a value is set."""

from __future__ import annotations

from hl7apy.core import Group, Message

from node.egress.notice import Notice
from node.settings import Notification

# (finding key, what the OBX names, UCUM unit)
MEASURES = (("volume_ml", "volume", "mL"), ("area_mm2", "area", "mm2"),
            ("probability", "probability", "1"))


def escaped(value: object) -> str:
    """A field value with HL7's delimiters escaped (HL7 v2.5 2.7); line breaks as spaces."""
    text = str(value)
    for raw, escape in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"),
                        ("~", "\\R\\"), ("\r", " "), ("\n", " ")):
        text = text.replace(raw, escape)
    return text


def _observation(order: Group, number: int, value_type: str, identifier: str, value: str,
                 units: str = "") -> Group:
    observation = order.add_group("ORU_R01_OBSERVATION")
    obx = observation.obx
    obx.obx_1, obx.obx_2, obx.obx_3, obx.obx_5 = str(number), value_type, identifier, value
    if units:
        obx.obx_6 = units
    obx.obx_11 = "P"  # preliminary: an AI result
    return observation


def hl7_message(notice: Notice, target: Notification, sending_application: str) -> str:
    """ORU^R01 in ER7: OBR priority S urgent / R routine and result status P preliminary, one
    OBX per finding (CWE present/absent, NM size or probability), NTE with the model and the
    notice. The control ID is the outbox item's, so a re-sent message can be recognised by
    the RIS."""
    when = notice.issued.strftime("%Y%m%d%H%M%S")
    message = Message("ORU_R01", version="2.5")
    msh = message.msh
    msh.msh_3, msh.msh_4 = escaped(sending_application), escaped(target.sending_facility)
    msh.msh_5 = escaped(target.receiving_application)
    msh.msh_6 = escaped(target.receiving_facility)
    msh.msh_7, msh.msh_9 = when, "ORU^R01^ORU_R01"
    msh.msh_10, msh.msh_11 = f"AINODE{notice.item_id}", "P"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1, pid.pid_3 = "1", escaped(notice.patient_id)
    pid.pid_5 = escaped(notice.patient_name)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1, obr.obr_3 = "1", escaped(notice.accession)
    obr.obr_4 = "18748-4^Diagnostic imaging study^LN"
    obr.obr_5 = "S" if notice.urgent else "R"
    obr.obr_7, obr.obr_22, obr.obr_25 = when, when, "P"
    number = 0
    last: Group | None = None
    for name, finding in notice.findings.items():
        number += 1
        state = "52101004^Present^SCT" if finding.present else "2667000^Absent^SCT"
        last = _observation(order, number, "CWE", f"^{escaped(name)}^L", state)
        for key, what, unit in MEASURES:
            value = getattr(finding, key)
            if value is not None:
                number += 1
                last = _observation(order, number, "NM", f"^{escaped(name)} {what}^L",
                                    str(value), f"{unit}^{unit}^UCUM")
    note = (last if last is not None else order).add_segment("NTE")
    note.nte_1 = "1"
    note.nte_3 = escaped(f"{notice.summary}; study {notice.study_uid}")
    return str(message.to_er7()) + "\r"

"""The audit trail as DICOM audit messages (PS3.15 A.5, the IHE ATNA format) sent to a
syslog collector (RFC 5424 messages; over UDP as RFC 5426, over TCP framed by octet counting
as RFC 6587 3.4.1).

:class:`AuditForwarder` takes the lines not yet forwarded from the job store (every process
writes there, so nothing is missed and a crash forwards nothing twice), turns each into a
message and marks it forwarded. Over TCP, a collector that is down leaves the lines waiting
(the loop's backoff retries); over UDP a lost datagram cannot be told, as RFC 5426 says.

Events (PS3.15 A.5.3): node started / stopped -> Application Activity; associations that
stored instances -> DICOM Instances Transferred (the caller the source, this node the
destination); results sent or given up -> DICOM Instances Transferred (this node the
source); jobs -> DICOM Instances Accessed (results created); deletions -> DICOM Study
Deleted; rejected associations, configuration and peer changes, operators' actions (requeue,
cancel, complete now, re-identification) -> Security Alert; studies retrieved on request ->
DICOM Instances Transferred (this node the destination). Every :class:`AuditEvent` has its
message in :data:`MESSAGES`. No patient participant: the node's trail names studies by UID,
never the patient.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

from node.domain import AuditEvent
from node.settings import AuditSection, Settings
from node.store.jobs import AuditLine, JobStore

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10  # RFC 5424 6.2.1, as IHE ITI-20 asks
SEVERITY = {0: 5, 4: 4, 8: 3, 12: 3}  # notice; warning; error
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
MAX_UDP_BYTES = 65000
BATCH = 100


@dataclass(frozen=True)
class _Code:
    code: str
    meaning: str
    scheme: str = "DCM"

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(parent, tag, {"csd-code": self.code, "codeSystemName": self.scheme,
                                           "originalText": self.meaning})


APPLICATION_ACTIVITY = _Code("110100", "Application Activity")
INSTANCES_ACCESSED = _Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = _Code("110105", "DICOM Study Deleted")
EXPORT = _Code("110106", "Export")
SECURITY_ALERT = _Code("110113", "Security Alert")
USER_AUTHENTICATION = _Code("110114", "User Authentication")
LOGIN = _Code("110122", "Login")
APPLICATION_START = _Code("110120", "Application Start")
APPLICATION_STOP = _Code("110121", "Application Stop")
NODE_AUTHENTICATION = _Code("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = _Code("110131", "Software Configuration")
RESTRICTED_FUNCTION = _Code("110132", "Use of Restricted Function")
APPLICATION = _Code("110150", "Application")
APPLICATION_LAUNCHER = _Code("110151", "Application Launcher")
DESTINATION = _Code("110152", "Destination Role ID")
SOURCE = _Code("110153", "Source Role ID")
STUDY_UID = _Code("110180", "Study Instance UID")


@dataclass(frozen=True)
class _Event:
    event: _Code
    action: str  # EventActionCode: C create, R read, U update, D delete, E execute
    type_code: _Code | None
    actor_role: _Code | None  # the actor's RoleIDCode
    node_role: _Code | None  # this node's RoleIDCode (None: the node is not a participant)
    needs_objects: bool = False  # nothing to say without studies (an echo-only association)


_OPERATOR_ACTION = _Event(SECURITY_ALERT, "E", RESTRICTED_FUNCTION, None, APPLICATION)
_PEER_CHANGE = _Event(SECURITY_ALERT, "E", SOFTWARE_CONFIGURATION, None, APPLICATION)
_RETRIEVED = _Event(INSTANCES_TRANSFERRED, "C", None, None, DESTINATION, needs_objects=True)

MESSAGES: dict[AuditEvent, _Event] = {
    AuditEvent.NODE_STARTED: _Event(APPLICATION_ACTIVITY, "E", APPLICATION_START,
                                    APPLICATION_LAUNCHER, APPLICATION),
    AuditEvent.NODE_STOPPED: _Event(APPLICATION_ACTIVITY, "E", APPLICATION_STOP,
                                    APPLICATION_LAUNCHER, APPLICATION),
    AuditEvent.PROCESS_ENDED: _Event(APPLICATION_ACTIVITY, "E", APPLICATION_STOP, None,
                                     APPLICATION),
    AuditEvent.ASSOCIATION_RELEASED: _Event(INSTANCES_TRANSFERRED, "C", None, SOURCE,
                                            DESTINATION, needs_objects=True),
    AuditEvent.ASSOCIATION_ABORTED: _Event(INSTANCES_TRANSFERRED, "C", None, SOURCE,
                                           DESTINATION, needs_objects=True),
    AuditEvent.ASSOCIATION_REJECTED: _Event(SECURITY_ALERT, "E", NODE_AUTHENTICATION, None,
                                            APPLICATION),
    # a burst of wrong HTTP tokens from one address (node.web.throttle)
    AuditEvent.AUTHENTICATION_FAILED: _Event(USER_AUTHENTICATION, "E", LOGIN, None,
                                             APPLICATION),
    AuditEvent.CONFIGURATION_CHANGED: _PEER_CHANGE,
    # peers (AE titles, addresses) changed live: the configuration changes (A.5.3.11)
    AuditEvent.PEER_ADDED: _PEER_CHANGE,
    AuditEvent.PEER_CHANGED: _PEER_CHANGE,
    AuditEvent.PEER_REMOVED: _PEER_CHANGE,
    AuditEvent.PEER_RESET: _PEER_CHANGE,
    AuditEvent.JOB_DONE: _Event(INSTANCES_ACCESSED, "C", None, None, APPLICATION),
    AuditEvent.JOB_FAILED: _Event(INSTANCES_ACCESSED, "C", None, None, APPLICATION),
    # an operator's hand on the node's work
    AuditEvent.JOB_CANCELLED: _OPERATOR_ACTION,
    AuditEvent.JOBS_REQUEUED: _OPERATOR_ACTION,
    AuditEvent.RESULTS_REQUEUED: _OPERATOR_ACTION,
    AuditEvent.SERIES_COMPLETED: _OPERATOR_ACTION,
    AuditEvent.REIDENTIFICATION: _OPERATOR_ACTION,
    AuditEvent.RESULTS_SENT: _Event(INSTANCES_TRANSFERRED, "C", None, None, SOURCE),
    AuditEvent.DELIVERY_GIVEN_UP: _Event(INSTANCES_TRANSFERRED, "C", None, None, SOURCE),
    # a study retrieved from a PACS on an operator's request: the node is the destination
    AuditEvent.STUDY_RETRIEVED: _RETRIEVED,
    AuditEvent.STUDY_RETRIEVE_FAILED: _RETRIEVED,
    AuditEvent.DELETED: _Event(STUDY_DELETED, "D", None, None, APPLICATION),
    # a result rejected in the PACS by an IOCM note (the instances are to be removed there)
    AuditEvent.RESULT_WITHDRAWN: _Event(INSTANCES_ACCESSED, "D", None, None, APPLICATION),
    # a radiologist's verdict on a result (accept, reject, modify): its assessment updated
    AuditEvent.RESULT_ASSESSED: _Event(INSTANCES_ACCESSED, "U", None, None, APPLICATION),
    AuditEvent.RESEARCH_EXPORT: _Event(EXPORT, "R", None, None, SOURCE),
}


def _address_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        socket.inet_pton(_family(address), address)
    except OSError:
        return "1"
    return "2"


def audit_message(line: AuditLine, settings: Settings) -> bytes | None:
    """The DICOM audit message (PS3.15 A.5.1 schema) for one audit line; ``None`` for a line
    with nothing to report there (an association that stored nothing)."""
    try:
        event: _Event | None = MESSAGES[AuditEvent(line.action)]
    except (KeyError, ValueError):  # a line from an older version, under another name
        event = None
    studies = [uid for kind, uid in line.objects if kind == "study"]
    if event is None or (event.needs_objects and not studies):
        return None
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": datetime.fromtimestamp(line.at, UTC).isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": str(line.outcome),
    })
    event.event.element(identification, "EventID")
    if event.type_code is not None:
        event.type_code.element(identification, "EventTypeCode")
    if line.outcome:
        ET.SubElement(identification, "EventOutcomeDescription").text = line.detail
    node_title = settings.node.ae_title
    host = socket.gethostname()
    external = line.actor != "node" and not line.actor.startswith(f"{node_title}@")
    if external:  # a caller, an operator: the one who asked
        actor = {"UserID": line.actor, "UserIsRequestor": "true"}
        if line.address:
            actor |= {"NetworkAccessPointID": line.address,
                      "NetworkAccessPointTypeCode": _address_type(line.address)}
        participant = ET.SubElement(message, "ActiveParticipant", actor)
        if event.actor_role is not None:
            event.actor_role.element(participant, "RoleIDCode")
    peers = [uid for kind, uid in line.objects if kind == "peer"]
    for peer in peers:  # a destination this node sent to
        participant = ET.SubElement(message, "ActiveParticipant", {
            "UserID": peer, "UserIsRequestor": "false"})
        DESTINATION.element(participant, "RoleIDCode")
    if event.node_role is not None:
        participant = ET.SubElement(message, "ActiveParticipant", {
            "UserID": node_title, "AlternativeUserID": str(os.getpid()),
            "UserIsRequestor": str(not external).lower(),
            "NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "1"})
        event.node_role.element(participant, "RoleIDCode")
    audit = settings.audit
    source = ET.SubElement(message, "AuditSourceIdentification", {
        "AuditSourceID": audit.source_id or node_title,
        **({"AuditEnterpriseSiteID": audit.enterprise_site} if audit.enterprise_site else {}),
    })
    _Code("4", "Application Server process tier in a multi-tier system").element(
        source, "AuditSourceTypeCode")
    series = [uid for kind, uid in line.objects if kind == "series"]
    for study in studies:
        obj = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": study, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        STUDY_UID.element(obj, "ParticipantObjectIDTypeCode")
        for uid in series:
            value = base64.b64encode(uid.encode()).decode("ascii")
            ET.SubElement(obj, "ParticipantObjectDetail",
                          {"type": "SeriesInstanceUID", "value": value})
    return bytes(ET.tostring(message, encoding="utf-8", xml_declaration=True))


def syslog_frame(xml: bytes, outcome: int, at: float, app_name: str = "ainode") -> bytes:
    """One RFC 5424 message: facility authpriv, severity by outcome, MSGID IHE+RFC-3881, no
    structured data, the XML as UTF-8 (with the BOM RFC 5424 6.4 asks for).

    Framed here rather than by a library: the standard library's ``SysLogHandler`` writes
    RFC 3164, and the RFC 5424 handlers on PyPI (rfc5424-logging-handler, last released in
    2019) are logging handlers that send as a record is emitted, where the forwarder needs the
    bytes to send a batch and mark the lines forwarded only once the collector took them."""
    priority = FACILITY_AUTHPRIV * 8 + SEVERITY.get(outcome, 3)
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
    host = socket.gethostname()[:255] or "-"
    header = f"<{priority}>1 {stamp} {host} {app_name} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + BOM + xml


class SyslogSender:
    """Sends framed messages to the collector; TCP keeps one connection and reconnects."""

    def __init__(self, audit: AuditSection, timeout_s: float = 5.0) -> None:
        collector = audit.collector
        if collector is None:
            raise ValueError("audit.syslog is not set")
        self._target = collector
        self._tcp = audit.transport == "tcp"
        self._timeout_s = timeout_s
        self._socket: socket.socket | None = None

    def send(self, message: bytes) -> None:
        if not self._tcp:
            if len(message) > MAX_UDP_BYTES:
                message = message[:MAX_UDP_BYTES]  # RFC 5426 3.2: a receiver may truncate
            with socket.socket(_family(self._target[0]), socket.SOCK_DGRAM) as udp:
                udp.sendto(message, self._target)
            return
        if self._socket is None:
            self._socket = socket.create_connection(self._target, timeout=self._timeout_s)
        try:
            self._socket.sendall(str(len(message)).encode() + b" " + message)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class AuditForwarder:
    """One pass (:meth:`forward`) sends every waiting audit line to the collector."""

    def __init__(self, settings: Settings, store: JobStore,
                 sender: SyslogSender | None = None) -> None:
        self._settings = settings
        self._store = store
        self._sender = sender or SyslogSender(settings.audit)
        self._failures = 0
        self._not_before = 0.0

    def forward(self) -> bool:
        """Forward a batch; ``True`` when a full batch went (more may wait). A collector that
        cannot be reached leaves the batch waiting: one warning, then tries with a growing
        pause (at most a minute) until it answers again."""
        if time.monotonic() < self._not_before:
            return False
        lines = self._store.claim_audit_lines(time.time(), BATCH)
        sent: list[int] = []
        try:
            for line in lines:
                xml = audit_message(line, self._settings)
                if xml is not None:
                    self._sender.send(syslog_frame(xml, line.outcome, line.at))
                sent.append(line.id)
        except OSError as exc:
            if not self._failures:
                log.warning("audit collector %s unreachable (%s): audit lines wait for it",
                            self._settings.audit.syslog, exc.__class__.__name__)
            self._failures += 1
            self._not_before = time.monotonic() + min(60.0, 0.5 * 2 ** self._failures)
            return False
        finally:
            if sent:
                self._store.audit_forwarded(sent)
            done = set(sent)
            unsent = [line.id for line in lines if line.id not in done]
            if unsent:
                self._store.audit_forwarded(unsent, forwarded=False)
        if self._failures and lines:
            log.info("audit collector %s reachable again", self._settings.audit.syslog)
            self._failures = 0
        return len(lines) >= BATCH

    def close(self) -> None:
        self._sender.close()


def forward_remaining(forwarder: AuditForwarder) -> None:
    """At a stop: forward what is waiting (the stop's own lines); a collector that is down
    leaves them for the next start."""
    try:
        while forwarder.forward():
            pass
    except Exception as exc:  # the store: the lines stay there for the next start
        log.warning("audit lines left for the next start (%s)", exc.__class__.__name__)
    finally:
        forwarder.close()

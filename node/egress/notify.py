"""Notifications of results for triage (``notify[]``), sent from the outbox like results, so
they are durable, retried with backoff and dead-lettered with their reason:

- a JSON webhook, signed with HMAC-SHA256 over the body (``X-Ainode-Signature:
  sha256=<hex>``) when a secret is set;
- FHIR R4: a transaction Bundle (:mod:`node.egress.fhir`, built from fhir.resources' models);
- HL7 v2.5 ORU^R01 (:mod:`node.egress.hl7v2`, built on hl7apy's message structure) over MLLP
  to a RIS; the RIS's ACK decides (AA sent, AE retried, AR dead). The MLLP framing (a start
  byte, the message, end bytes) is ours: python-hl7's ``MLLPClient`` connects over IPv4 only,
  without a timeout, and reads one buffer for the ACK; hl7apy has no client.

What is announced comes from the job store (pipeline, model and version, findings, urgency)
and the result's own header (patient, accession, study): the clinical channel carries them;
logs never do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from typing import Any

import requests

from node.domain import Outcome
from node.egress.fhir import fhir_bundle
from node.egress.hl7v2 import hl7_message
from node.egress.notice import NOTICE, Notice, notice_for
from node.settings import Notification
from node.store.jobs import JobStore
from node.store.outbox import OutboxItem

SIGNATURE_HEADER = "X-Ainode-Signature"
MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"


# -- payloads ------------------------------------------------------------------------------
def webhook_body(notice: Notice) -> dict[str, Any]:
    return {
        "event": "ainode.result", "urgent": notice.urgent, "summary": notice.summary,
        "notice": NOTICE, "study_instance_uid": notice.study_uid,
        "series_instance_uid": notice.series_uid, "accession_number": notice.accession,
        "patient_id": notice.patient_id, "pipeline": notice.pipeline, "model": notice.model,
        "model_version": notice.model_version, "report_sop_instance_uid": notice.report_uid,
        "findings": [{"label": name, **finding.as_json()}
                     for name, finding in notice.findings.items()],
        "issued": notice.issued.isoformat(),
    }


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

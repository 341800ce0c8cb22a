"""DIMSE SCU towards a configured peer: C-ECHO and C-STORE of Part 10 files (PS3.4 A, B)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from node.dicom import tls
from node.dicom.files import VERIFICATION
from node.settings import Peer, TlsSection

log = logging.getLogger(__name__)

MAX_PRESENTATION_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255
NOT_SENT = "not sent"


class PeerUnavailable(ConnectionError):
    """The association with the peer could not be established (down, or unreachable)."""


class PeerRefused(PeerUnavailable):
    """The peer answered and refused: association rejected permanently, or none of the
    proposed presentation contexts (SOP class + transfer syntax) accepted. Retrying will not
    help until someone changes a configuration."""


def _is_transient_rejection(result: int | None, source: int | None) -> bool:
    """PS3.8 9.3.4 (Table 9-21): *rejected-transient* (result 2), and the presentation
    layer's own reasons (source 3: temporary congestion, local limit exceeded) pass with time;
    a permanent rejection by the service user (e.g. calling AE title not recognised) or the
    ACSE provider (protocol version) does not."""
    return result == 0x02 or source == 3


@dataclass(frozen=True, slots=True)
class SendReport:
    """Per-file outcome: ``0x0000``-style status strings, or a reason it was not sent."""

    outcomes: dict[Path, str]

    @property
    def summary(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(1 for status in self.outcomes.values() if status not in ("0x0000",))


def _client(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.maximum_pdu_size = 0
    return ae


def associate(ae: AE, peer: Peer, node_tls: TlsSection | None = None, *,
              ext_neg: list[Any] | None = None, evt_handlers: list[Any] | None = None) -> Any:
    """An association with ``peer`` (over TLS when ``peer.tls``, presenting ``node_tls``'s
    certificate), or :class:`PeerRefused` / :class:`PeerUnavailable` saying why not.
    ``ext_neg``: e.g. SCP/SCU role selection (C-GET); ``evt_handlers``: the association's."""
    rejections: list[Any] = []

    def _keep_rejection(event: evt.Event) -> None:
        primitive = getattr(event, "primitive", None)  # EVT_ACSE_RECV carries it
        if getattr(primitive, "result", None) in (0x01, 0x02):  # A-ASSOCIATE-RJ
            rejections.append(primitive)

    tls_args = (tls.client_context(peer, node_tls), peer.host) if peer.tls else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args,
                         ext_neg=ext_neg or None,
                         evt_handlers=[(evt.EVT_ACSE_RECV, _keep_rejection),
                                       *(evt_handlers or [])])
    if not assoc.is_established:
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        if assoc.is_rejected:
            if not rejections:
                raise PeerRefused(f"{peer.name} ({where}) rejected the association")
            answer = rejections[0]
            why = f"{answer.source_str}: {answer.reason_str}"
            if _is_transient_rejection(answer.result, answer.result_source):
                raise PeerUnavailable(
                    f"{peer.name} ({where}) rejected the association for now ({why})")
            raise PeerRefused(f"{peer.name} ({where}) rejected the association ({why})")
        if assoc.rejected_contexts and not assoc.accepted_contexts:  # AC received, all refused
            classes = sorted({str(getattr(c.abstract_syntax, "name", c.abstract_syntax))
                              for c in assoc.rejected_contexts})
            raise PeerRefused(f"{peer.name} ({where}) accepted no presentation context for "
                              f"{', '.join(classes)}")
        over = " over TLS (a handshake or certificate failure is logged above)" if peer.tls else ""
        raise PeerUnavailable(f"no association with {peer.name} ({where}){over}")
    return assoc


def echo(peer: Peer, calling_ae: str, timeout_s: float = 10,
         node_tls: TlsSection | None = None) -> int:
    """C-ECHO the peer; returns the DIMSE status. Raises :class:`PeerUnavailable`."""
    ae = _client(calling_ae, timeout_s)
    ae.add_requested_context(VERIFICATION)
    assoc = associate(ae, peer, node_tls)
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in response:
        raise PeerUnavailable(f"{peer.name} sent no C-ECHO response")
    return int(response.Status)


def _contexts_for(paths: Sequence[Path]) -> tuple[dict[Path, tuple[str, str]], dict[Path, str]]:
    """(SOP class, transfer syntax) of each readable file, and a reason for each unreadable one."""
    readable: dict[Path, tuple[str, str]] = {}
    unreadable: dict[Path, str] = {}
    for path in paths:
        try:
            header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            readable[path] = (str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID))
        except (InvalidDicomError, OSError, AttributeError, ValueError, KeyError, EOFError) as exc:
            unreadable[path] = f"{NOT_SENT}: unreadable ({exc.__class__.__name__})"
    return readable, unreadable


def send_files(
    paths: Sequence[Path],
    peer: Peer,
    calling_ae: str,
    on_progress: Callable[[Path, str], None] | None = None,
    timeout_s: float = 30,
    node_tls: TlsSection | None = None,
) -> SendReport:
    """C-STORE each file as stored (no transcoding) over one association.

    Proposes each (SOP class, file's transfer syntax) pair with the uncompressed syntaxes as
    fallback. Raises :class:`PeerUnavailable` when no association can be made.
    """
    readable, outcomes = _contexts_for(paths)
    for path, reason in outcomes.items():
        if on_progress:
            on_progress(path, reason)
    ae = _client(calling_ae, timeout_s)
    syntaxes: dict[str, set[str]] = {}
    for sop_class, transfer_syntax in readable.values():
        syntaxes.setdefault(sop_class, set()).add(transfer_syntax)
    for sop_class in sorted(syntaxes):
        proposed = sorted(syntaxes[sop_class] | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        for transfer_syntax in proposed:  # one context each, so the peer may accept any
            if len(ae.requested_contexts) < MAX_PRESENTATION_CONTEXTS:
                ae.add_requested_context(sop_class, transfer_syntax)
    if not readable:
        return SendReport(outcomes)
    assoc = associate(ae, peer, node_tls)
    try:
        for path in readable:
            if not assoc.is_established:
                outcome = f"{NOT_SENT}: association lost"
            else:
                try:
                    response = assoc.send_c_store(path)
                    outcome = (
                        f"0x{int(response.Status):04X}"
                        if "Status" in response
                        else (f"{NOT_SENT}: no response")
                    )
                except (ValueError, AttributeError) as exc:
                    outcome = f"{NOT_SENT}: {exc}"[:120]
            outcomes[path] = outcome
            if on_progress:
                on_progress(path, outcome)
    finally:
        if assoc.is_established:
            assoc.release()
    return SendReport(outcomes)

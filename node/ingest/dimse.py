"""DIMSE Storage SCP (PS3.4 Annex B) and Verification SCP (Annex A) on pynetdicom.

Every C-STORE is written to the spool (fsync) and indexed in the job store *before* the
response is sent. Handlers return a DIMSE status; no exception escapes them:

- ``0x0000`` success (a duplicate SOP Instance UID replaces the earlier copy and is counted);
- ``0xA700`` out of resources: free disk under ``node.min_free_disk_mb``, an instance larger
  than ``node.max_instance_mb`` (not kept), or the write failed;
- ``0xA900`` data set does not match SOP class: header UIDs differ from the request's;
- ``0xC210`` cannot understand: the data set cannot be parsed or lacks the UIDs we need.

Associations from calling AE titles not in ``peers`` are rejected (A-ASSOCIATE-RJ, reason
"calling AE title not recognised") unless ``node.accept_unknown_callers``, and with
``node.check_caller_host`` also a peer's AE title from another address (:mod:`callers`); a
wrong called AE title is rejected likewise (PS3.8 9.3.4).
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.transport import ThreadedAssociationServer

from node.audit.trail import MINOR_FAILURE, Audit, no_audit
from node.dicom import tls
from node.dicom.files import (
    VERIFICATION,
    InstanceIdentity,
    UnreadableInstance,
    read_identity,
    stamp_association,
)
from node.domain import AuditEvent, StoreOutcome
from node.ingest import receive_path
from node.ingest.callers import CallerCheckingAE, CallerPolicy, log_rejection
from node.ingest.gate import PreAssociationGate
from node.ingest.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    InstanceRecorder,
    Intake,
    Refusal,
)
from node.runtime import metrics
from node.settings import Settings
from node.store.spool import InstanceStorage

log = logging.getLogger(__name__)

SUCCESS = 0x0000


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (0000,0902), at most 64 characters."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


SEND_BUFFER_BYTES = 64 * 1024  # per accepted connection (the SCP's answers)
PRE_ASSOCIATION_TIMEOUT_S = 5.0  # connect -> A-ASSOCIATE-RQ (at most node.acse_timeout_s)


@dataclass
class _AssociationStats:
    calling_ae: str
    started: float
    address: str = ""
    secured: str | None = None
    stored: int = 0
    duplicates: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    # instances stored per (study, series) UID: the audit trail's instances received per series
    series: dict[tuple[str, str], int] = field(default_factory=dict)


class StorageHandlers:
    """The C-STORE / association event handlers, independent of the network plumbing."""

    def __init__(
        self,
        settings: Settings,
        spool: InstanceStorage,
        record: InstanceRecorder,
        on_recorded: Callable[[StoreOutcome, int], None],
        on_association_end: Callable[[int, bool], None],
        clock: Callable[[], float] = time.time,
        *,
        audit: Audit = no_audit,
    ) -> None:
        self._settings = settings
        self._audit = audit
        self._spool = spool
        self._intake = Intake(spool, record, on_recorded, clock,
                              min_free_mb=settings.node.min_free_disk_mb, transport="dimse")
        self._on_association_end = on_association_end
        self._max_instance_bytes = settings.node.max_instance_mb * 1024 * 1024
        self._stats: dict[int, _AssociationStats] = {}

        self._lock = threading.Lock()

    @property
    def audit(self) -> Audit:
        return self._audit

    @property
    def spool_tmp_dir(self) -> Path:
        return self._spool.tmp_dir

    # -- association lifecycle -------------------------------------------------------------
    def on_established(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels("accepted", "").inc()
        requestor = event.assoc.requestor
        secured = tls.describe(getattr(getattr(event.assoc.dul, "socket", None), "socket", None))
        if secured:
            log.info("association from %s (%s) over %s", requestor.ae_title,
                     requestor.address, secured)
        with self._lock:
            self._stats[id(event.assoc)] = _AssociationStats(
                calling_ae=str(requestor.ae_title).strip(), started=time.monotonic(),
                address=str(requestor.address), secured=secured)

    def on_released(self, event: evt.Event) -> None:
        self._association_closed(event, released=True)

    def on_aborted(self, event: evt.Event) -> None:
        self._association_closed(event, released=False)

    def _association_closed(self, event: evt.Event, *, released: bool) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is not None:
            failed = sum(stats.failed.values())
            log.info(
                "association from %s %s: %d stored (%d duplicates), %d failed %s in %.1f s",
                stats.calling_ae,
                "released" if released else "aborted",
                stats.stored,
                stats.duplicates,
                failed,
                {f"0x{k:04X}": v for k, v in stats.failed.items()} if failed else "",
                time.monotonic() - stats.started,
            )
            codes = ", ".join(f"0x{k:04X}: {v}" for k, v in stats.failed.items())
            per_series = "; ".join(f"series {series}: {count}"
                                   for (_, series), count in stats.series.items())
            self._audit(stats.calling_ae, AuditEvent.ASSOCIATION_RELEASED if released
                        else AuditEvent.ASSOCIATION_ABORTED,
                        f"from {stats.address}{' over ' + stats.secured if stats.secured else ''}"
                        f": {stats.stored} instance(s) stored ({stats.duplicates} duplicates), "
                        f"{failed} refused{' (' + codes + ')' if failed else ''}"
                        f"{'; ' + per_series if per_series else ''}",
                        address=stats.address,
                        objects=[*dict.fromkeys(("study", study) for study, _ in stats.series),
                                 *(("series", series) for _, series in stats.series)],
                        outcome=0 if released and not failed else MINOR_FAILURE)
        try:
            self._on_association_end(id(event.assoc), released)
        except Exception:
            log.exception("series bookkeeping failed after association end")

    # -- C-STORE ---------------------------------------------------------------------------
    def on_store(self, event: evt.Event) -> Dataset | int:
        stats = self._stats.get(id(event.assoc))
        try:
            status = self._store(event, stats)
        except Exception as exc:  # the last line of defence: log it, answer, keep serving
            log.exception("C-STORE failed unexpectedly (%s)", exc.__class__.__name__)
            status = _status(OUT_OF_RESOURCES, "internal error; instance not stored")
        if stats is not None and isinstance(status, Dataset):
            code = int(status.Status)
            stats.failed[code] = stats.failed.get(code, 0) + 1
        return status

    def _identify(
        self, received: Path | None, encoded: bytes, request: C_STORE, calling_ae: str
    ) -> InstanceIdentity | Dataset:
        """The instance's identity, or the failure status that refuses it."""
        sop_uid = str(request.AffectedSOPInstanceUID)
        try:
            if received:
                with open(received, "rb") as stream:
                    identity = read_identity(stream)
            else:
                identity = read_identity(BytesIO(encoded))
        except UnreadableInstance as exc:
            log.warning("C-STORE from %s refused, 0xC210: %s (SOP %s)", calling_ae, exc, sop_uid)
            return self._refused(CANNOT_UNDERSTAND, str(exc))
        if identity.sop_class_uid != str(request.AffectedSOPClassUID):
            log.warning("C-STORE from %s refused, 0xA900: SOP Class UID differs", calling_ae)
            return self._refused(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                 "SOP Class UID differs from request")
        if identity.sop_instance_uid != sop_uid:
            log.warning("C-STORE from %s refused, 0xA900: SOP Instance UID differs", calling_ae)
            return self._refused(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                 "SOP Instance UID differs from request")
        return identity

    def _store(self, event: evt.Event, stats: _AssociationStats | None) -> Dataset | int:
        request = cast(C_STORE, event.request)
        calling_ae = str(event.assoc.requestor.ae_title)
        sop_uid = str(request.AffectedSOPInstanceUID)
        refusal = self._intake.disk_refusal()
        if refusal is not None:
            log.warning(
                "C-STORE from %s refused: free disk below node.min_free_disk_mb (%d MB)",
                calling_ae,
                self._settings.node.min_free_disk_mb,
            )
            return _status(refusal.code, refusal.reason)
        received: Path | None = getattr(request, "_dataset_path", None)  # chunked receive
        encoded = b"" if received else self._part10(event, calling_ae)
        if receive_path.too_large(request) or (
                self._max_instance_bytes and len(encoded) > self._max_instance_bytes):
            if received:
                received.unlink(missing_ok=True)
            log.warning("C-STORE from %s refused, 0xA700: larger than node.max_instance_mb "
                        "(%d MB; SOP %s)", calling_ae, self._settings.node.max_instance_mb,
                        sop_uid)
            return self._refused(OUT_OF_RESOURCES, "instance larger than node.max_instance_mb")
        identity = self._identify(received, encoded, request, calling_ae)
        if isinstance(identity, Dataset):
            return identity
        outcome = self._intake.keep(identity, received, encoded, calling_ae,
                                    self._settings.node.ae_title, id(event.assoc))
        if isinstance(outcome, Refusal):
            return _status(outcome.code, outcome.reason)
        if stats is not None:
            stats.stored += 1
            stats.duplicates += int(outcome.duplicate)
            key = (identity.study_instance_uid, identity.series_instance_uid)
            stats.series[key] = stats.series.get(key, 0) + 1
        return SUCCESS

    def _refused(self, code: int, comment: str) -> Dataset:
        refusal = self._intake.refused(code, comment)
        return _status(refusal.code, refusal.reason)

    def _part10(self, event: evt.Event, calling_ae: str) -> bytes:
        """The received data set as a Part 10 file whose meta names the association."""
        meta = event.file_meta
        stamp_association(meta, calling_ae, self._settings.node.ae_title)
        request = cast(C_STORE, event.request)
        dataset = cast(BytesIO, request.DataSet).getvalue()
        return b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta), dataset))


def storage_sop_classes() -> list[str]:
    """The storage SOP classes the SCP accepts (each with every transfer syntax pynetdicom
    knows): every one pynetdicom knows. Also the conformance statement's table."""
    return [str(c.abstract_syntax) for c in AllStoragePresentationContexts
            if c.abstract_syntax is not None]


def build_storage_ae(settings: Settings, handlers: StorageHandlers,
                     current: Callable[[], Settings] | None = None) -> tuple[AE, list[Any]]:
    """An AE accepting every storage SOP class with every transfer syntax, plus Verification;
    callers are checked against ``current()``'s peers
    (:class:`node.operations.peers.PeerDirectory`)."""
    node = settings.node
    if node.event_driven_reactor:
        receive_path.install()
    if node.receive_to_disk:
        receive_path.stream_to(handlers.spool_tmp_dir, node.max_instance_mb * 1024 * 1024)
    ae = CallerCheckingAE(ae_title=node.ae_title)
    ae.caller_policy = policy = CallerPolicy(settings, current)
    ae.maximum_associations = node.max_associations
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.maximum_pdu_size = node.max_pdu_size
    ae.require_called_aet = True
    if not node.accept_unknown_callers and not (current or (lambda: settings))().peers:
        log.warning("no peers configured and accept_unknown_callers is false: every caller "
                    "will be rejected until peers are added")
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    event_handlers = [
        (evt.EVT_C_STORE, handlers.on_store),
        (evt.EVT_ESTABLISHED, handlers.on_established),
        (evt.EVT_RELEASED, handlers.on_released),
        (evt.EVT_ABORTED, handlers.on_aborted),
        (evt.EVT_REJECTED, functools.partial(log_rejection, policy, handlers.audit)),
    ]
    return ae, event_handlers


class _StorageServer(ThreadedAssociationServer):
    """pynetdicom's threaded acceptor, with three changes:

    - with ``share_port``, bound with ``SO_REUSEPORT``: several receiver processes listen on
      one port and the kernel spreads new associations among them;
    - a TLS handshake runs on the connection's own thread, within the ACSE timeout, instead of
      in the acceptor (where pynetdicom does it, so one client that connects and says nothing
      would hold every other connection back). A failed handshake is logged and closed;
    - every accepted socket gets ``network_timeout_s`` (see ``process_request_thread``);
    - a connection gets an association thread (and counts against the association limit)
      only once its A-ASSOCIATE-RQ has arrived (:class:`node.ingest.gate.PreAssociationGate`).
    """

    share_port = False
    network_timeout_s = 60.0
    gate: PreAssociationGate = PreAssociationGate(PRE_ASSOCIATION_TIMEOUT_S)

    def server_bind(self) -> None:
        if self.share_port:
            cast(socket.socket, self.socket).setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, address = cast(socket.socket, self.socket).accept()
        if self.ssl_context:
            connection = self.ssl_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # Accepted sockets are blocking (Python drops the listener's timeout), and pynetdicom
        # reads a PDU until it has all the bytes its header announced: a client that sends
        # a header (or garbage that reads as one) and stops would hold this connection, its
        # threads and an association slot forever. A stall of network_timeout_s ends it.
        request.settimeout(self.network_timeout_s)
        # The SCP only answers (C-STORE-RSP, C-ECHO-RSP: a few hundred bytes each), so a
        # small send buffer costs nothing; it bounds how many answers a caller that never
        # reads can leave queued before a send stalls and network_timeout_s ends the
        # association (the kernel's default grows to megabytes: minutes of answers).
        request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        address = str(client_address[0])
        if isinstance(request, ssl.SSLSocket):
            try:
                tls.handshake(request, self.gate.timeout_s)
            except (ssl.SSLEOFError, ConnectionError):  # a port probe: closed, said nothing
                log.debug("connection from %s closed before a TLS handshake", client_address[0])
                self.shutdown_request(request)
                return
            except (OSError, ValueError) as exc:
                log.warning("TLS handshake from %s failed: %s", client_address[0],
                            getattr(exc, "reason", None) or exc.__class__.__name__)
                self.shutdown_request(request)
                return
        if not self.gate.admit(request, address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


@dataclass(frozen=True)
class Listener:
    """One DICOM port the receiver serves: plain TCP, or TLS with ``ssl_context``."""

    port: int
    ssl_context: ssl.SSLContext | None = None

    @property
    def kind(self) -> str:
        return "DICOM TLS" if self.ssl_context else "DICOM"


def listeners(settings: Settings) -> list[Listener]:
    """The ports ``node`` serves (see :class:`node.settings.TlsSection`)."""
    node = settings.node
    if not node.tls.enabled:
        return [Listener(node.dicom_port)]
    context = tls.server_context(node.tls)
    if node.tls.port is None:
        return [Listener(node.dicom_port, context)]
    plain = [Listener(node.dicom_port)] if node.dicom_port else []
    return [*plain, Listener(node.tls.port, context)]


def start_storage_server(
    ae: AE, address: tuple[str, int], evt_handlers: list[Any], *, share_port: bool,
    ssl_context: ssl.SSLContext | None = None, audit: Audit = no_audit,
) -> ThreadedAssociationServer:
    """Listen in the background (as ``AE.start_server(block=False)``), sharing the port with
    other receiver processes when ``share_port``, over TLS with ``ssl_context``."""
    gate = PreAssociationGate(min(ae.acse_timeout or 30.0, PRE_ASSOCIATION_TIMEOUT_S),
                              audit=audit)
    server_class = type("StorageServer", (_StorageServer,), {
        "share_port": share_port, "gate": gate,
        "network_timeout_s": ae.network_timeout or 60.0})
    server = ae.make_server(address, evt_handlers=evt_handlers, server_class=server_class,
                            ssl_context=ssl_context)
    thread = threading.Thread(target=server.serve_forever, name="storage-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)  # so AE.shutdown() stops it too
    return server

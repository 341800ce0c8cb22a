"""On-demand retrieve: a study fetched from a configured PACS and routed as if it had been
pushed (re-running AI on prior studies, back-filling). By the peer's ``retrieve``:

- ``get``: C-GET (PS3.4 C.4.3, Study Root) on one association, the instances arriving as
  C-STOREs on it (SCP role negotiated per storage SOP class);
- ``move``: C-MOVE to this node's own AE title: the PACS pushes the study to the node's
  Storage SCP (the receiver must be running, and the PACS must know the node's AE);
- ``wado``: WADO-RS (PS3.18 10.4) from the peer's ``dicomweb_url``.

Instances from ``get`` and ``wado`` are kept through the same :class:`Intake` as C-STORE and
STOW-RS (spool with fsync, job store, series assembly), with the peer's AE title as the
calling AE (a routing rule on ``calling_ae`` treats them as that PACS's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

import pydicom
import requests
from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.dicom.dicomweb import client_for
from node.dicom.files import UnreadableInstance, read_identity, stamp_association
from node.dicom.scu import PeerUnavailable, associate
from node.ingest.intake import CANNOT_UNDERSTAND, Intake, Refusal
from node.settings import Peer, Settings
from node.store.spool import well_formed_uid

log = logging.getLogger(__name__)


class RetrieveFailed(RuntimeError):
    """The PACS could not be asked, or refused the retrieve; the message says why."""


@dataclass
class Retrieved:
    """What a retrieve brought: instances kept, and those that failed (with why)."""

    method: str
    stored: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1


def method_for(peer: Peer) -> str:
    return peer.retrieve or ("wado" if peer.dicomweb_url else "get")


class Retriever:
    """Retrieves studies into the node through ``intake``."""

    def __init__(self, settings: Settings, intake: Intake,
                 on_instance: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._intake = intake
        self._on_instance = on_instance or (lambda: None)

    def study(self, peer: Peer, study_uid: str, timeout_s: float = 600) -> Retrieved:
        if not well_formed_uid(study_uid):  # it goes into a WADO-RS URL or a C-GET identifier
            raise RetrieveFailed("not a Study Instance UID (PS3.5 9.1: digits and dots)")
        method = method_for(peer)
        started = time.monotonic()
        result = Retrieved(method)
        batch = -int(time.time() * 1000)  # a request's id, never an association's
        if method == "wado":
            self._wado(peer, study_uid, result, batch, timeout_s)
        else:
            self._dimse(peer, study_uid, method, result, batch, timeout_s)
        result.seconds = round(time.monotonic() - started, 2)
        if not result.stored and not result.failed:
            raise RetrieveFailed(f"{peer.name} sent no instance of that study (by {method})")
        log.info("retrieved study from %s by %s: %d stored, %d failed in %.1f s", peer.name,
                 method, result.stored, sum(result.failed.values()), result.seconds)
        return result

    def _keep(self, encoded: bytes, peer: Peer, result: Retrieved, batch: int) -> int:
        """Keep one Part 10 instance; returns its DIMSE status."""
        try:
            identity = read_identity(BytesIO(encoded))
        except UnreadableInstance as exc:
            result.fail(f"0x{CANNOT_UNDERSTAND:04X} {exc}")
            return CANNOT_UNDERSTAND
        outcome = self._intake.keep(identity, None, encoded, peer.ae_title,
                                    self._settings.node.ae_title, batch)
        if isinstance(outcome, Refusal):
            result.fail(f"0x{outcome.code:04X} {outcome.reason}")
            return outcome.code
        result.stored += 1
        self._on_instance()
        return 0

    # -- WADO-RS ---------------------------------------------------------------------------
    def _wado(self, peer: Peer, study_uid: str, result: Retrieved, batch: int,
              timeout_s: float) -> None:
        if not peer.dicomweb_url:
            raise RetrieveFailed(f"{peer.name} has no dicomweb_url for WADO-RS")
        with requests.Session() as session:
            client = client_for(peer, session, timeout_s)
            try:
                instances = client.retrieve_study(study_uid)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                raise RetrieveFailed(f"WADO-RS from {peer.name}: HTTP {code}") from exc
            except requests.RequestException as exc:
                raise RetrieveFailed(f"WADO-RS from {peer.name}: "
                                     f"{exc.__class__.__name__}") from exc
        for dataset in instances:
            stamp_association(dataset.file_meta, peer.ae_title, self._settings.node.ae_title)
            buffer = BytesIO()
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
            self._keep(buffer.getvalue(), peer, result, batch)

    # -- C-GET / C-MOVE --------------------------------------------------------------------
    def _dimse(self, peer: Peer, study_uid: str, method: str, result: Retrieved, batch: int,
               timeout_s: float) -> None:
        ae = AE(ae_title=self._settings.node.ae_title)
        ae.acse_timeout = ae.network_timeout = 30
        ae.dimse_timeout = timeout_s
        ae.maximum_pdu_size = 0
        roles = []
        handlers: list[Any] = []
        if method == "get":
            model = StudyRootQueryRetrieveInformationModelGet
            ae.add_requested_context(model)
            for context in StoragePresentationContexts:  # 120 + 1: within the 128 allowed
                sop_class = str(context.abstract_syntax)
                ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
                roles.append(build_role(sop_class, scp_role=True))
            handlers = [(evt.EVT_C_STORE, lambda event: self._on_store(event, peer, result,
                                                                        batch))]
        else:
            model = StudyRootQueryRetrieveInformationModelMove
            ae.add_requested_context(model)
        try:
            assoc = associate(ae, peer, self._settings.node.tls, ext_neg=roles,
                              evt_handlers=handlers)
        except PeerUnavailable as exc:
            raise RetrieveFailed(str(exc)) from exc
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        try:
            if method == "get":
                responses = assoc.send_c_get(query, model)
            else:
                responses = assoc.send_c_move(query, self._settings.node.ae_title, model)
            final = None
            for status, _identifier in responses:
                if status is not None and "Status" in status:
                    final = status
            if final is None:
                raise RetrieveFailed(f"{peer.name} sent no C-{method.upper()} response")
            code = int(final.Status)
            if method == "move":
                result.stored = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
                failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
                if failed:
                    result.failed[f"0x{code:04X} failed sub-operations"] = failed
            if code not in (0x0000, 0xB000) and not result.stored:
                comment = final.get("ErrorComment", "")
                raise RetrieveFailed(f"{peer.name} answered C-{method.upper()} with "
                                     f"0x{code:04X}{': ' + str(comment) if comment else ''}")
        finally:
            if assoc.is_established:
                assoc.release()

    def _on_store(self, event: evt.Event, peer: Peer, result: Retrieved, batch: int) -> int:
        request = cast(C_STORE, event.request)
        meta = event.file_meta
        stamp_association(meta, peer.ae_title, self._settings.node.ae_title)
        dataset = cast(BytesIO, request.DataSet).getvalue()
        try:
            return self._keep(b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta),
                                        dataset)), peer, result, batch)
        except Exception as exc:  # a status for the PACS, never an exception into pynetdicom
            log.exception("retrieved instance not kept")
            result.fail(f"0xA700 {exc.__class__.__name__}")
            return 0xA700

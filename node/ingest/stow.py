"""STOW-RS in (PS3.18 10.5, Store Transaction): ``POST /dicomweb/studies[/{study}]`` with a
``multipart/related; type="application/dicom"`` body, one Part 10 instance per part.

Each instance goes the way a C-STORE goes (:class:`node.ingest.intake.Intake`: spool with
fsync, job store, series assembly), so it is stored and indexed before the response. The
response is the Store Instances Response Module (PS3.18 Table 10.5.3-1) in DICOM JSON: the
Referenced SOP Sequence for what was stored, the Failed SOP Sequence with a Failure Reason
(the DIMSE status a C-STORE would have got) for what was not. HTTP 200 when all were stored,
202 when some, 409 when none.

The body is split as it arrives by python-multipart's streaming parser (the one Starlette
uses for forms; any multipart subtype): each part's bytes are written once, straight to their
own spool temporary, which the spool then adopts, so memory stays flat whatever the size of
an instance, and the answer comes as soon as the last part is kept. Refusals are counted per
request and logged as one summary line (a body of 20 000 bad parts is one line, not 20 000).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from node.dicom.files import InstanceIdentity, UnreadableInstance, read_identity
from node.ingest.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    Intake,
    Refusal,
)
from node.store.durable import temporary_name

log = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
# the calling AE title recorded for instances that came by STOW-RS (routing rules may match it)
STOW_CALLER = "DICOMWEB"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)
MAX_PART_HEADER_BYTES = 8 * 1024


class BadRequest(ValueError):
    """The request as a whole cannot be read (HTTP 400 or 415 with this reason)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class StowResult:
    """What happened to each part, and the response to send."""

    stored: list[InstanceIdentity] = field(default_factory=list)
    failed: list[tuple[InstanceIdentity | None, Refusal]] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self, retrieve_base: str = "") -> dict[str, Any]:
        """The Store Instances Response Module as DICOM JSON (PS3.18 F.2)."""
        body: dict[str, Any] = {}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                {"00081150": {"vr": "UI", "Value": [i.sop_class_uid]},
                 "00081155": {"vr": "UI", "Value": [i.sop_instance_uid]},
                 **({"00081190": {"vr": "UR", "Value": [
                     f"{retrieve_base}/studies/{i.study_instance_uid}/series/"
                     f"{i.series_instance_uid}/instances/{i.sop_instance_uid}"]}}
                    if retrieve_base else {})}
                for i in self.stored]}
        if self.failed:
            items = []
            for identity, refusal in self.failed:
                item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [refusal.code]}}
                if identity is not None:
                    item["00081150"] = {"vr": "UI", "Value": [identity.sop_class_uid]}
                    item["00081155"] = {"vr": "UI", "Value": [identity.sop_instance_uid]}
                # the reason in words, as Orthanc and dcm4chee add it
                item["00000902"] = {"vr": "LO", "Value": [refusal.reason[:64]]}
                items.append(item)
            body["00081198"] = {"vr": "SQ", "Value": items}
        return body


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` STOW-RS body, or :class:`BadRequest`."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/related":
        raise BadRequest(f"Content-Type must be multipart/related, not {media or 'none'}", 415)
    kind = _TYPE.search(content_type)
    if kind and kind.group(1).strip().lower() != DICOM_MEDIA_TYPE:
        raise BadRequest(f"only type={DICOM_MEDIA_TYPE} is accepted, not {kind.group(1)}", 415)
    found = _BOUNDARY.search(content_type)
    if not found:
        raise BadRequest("multipart/related without a boundary")
    return found.group(1).strip().encode("latin-1")


class StowReceiver:
    """Stores the instances of one STOW-RS request body (already on disk)."""

    def __init__(self, intake: Intake, called_ae: str, max_instance_mb: int,
                 on_end: Callable[[int, bool], None] | None = None) -> None:
        """``on_end(batch, released)``: the request is over, as an association's release
        (series completion on release counts a request as one sender)."""
        self._on_end = on_end
        self._intake = intake
        self._called_ae = called_ae
        self._max_bytes = max_instance_mb * 1024 * 1024

    def disk_refusal(self) -> Refusal | None:
        """A refusal when free disk is below ``node.min_free_disk_mb`` (the whole request)."""
        return self._intake.disk_refusal()

    @property
    def tmp_dir(self) -> Path:
        """Where request bodies are written: the spool's file system (parts are adopted)."""
        return self._intake.spool.tmp_dir

    def request(self, content_type: str, study_uid: str | None, batch: int) -> StowRequest:
        """A request's parts, fed as they arrive (:meth:`StowRequest.write`); ``batch`` names
        the request for series bookkeeping. :class:`BadRequest` for a media type that is not
        ``multipart/related`` of DICOM."""
        return StowRequest(self, boundary_of(content_type), study_uid, batch)

    def end(self, batch: int) -> None:
        if self._on_end is not None:
            try:
                self._on_end(batch, True)
            except Exception:
                log.exception("series bookkeeping failed after a STOW-RS request")

    def keep(self, received: Path, study_uid: str | None, batch: int
             ) -> tuple[InstanceIdentity | None, InstanceIdentity | Refusal]:
        """One part, written to ``received`` (a spool temporary): kept or refused."""
        try:
            with open(received, "rb") as handle:
                identity = read_identity(handle)
        except UnreadableInstance as exc:
            received.unlink(missing_ok=True)
            return None, self._intake.refused(CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            received.unlink(missing_ok=True)
            return None, self._intake.refused(OUT_OF_RESOURCES, f"write failed ({exc.strerror})")
        if study_uid is not None and identity.study_instance_uid != study_uid:
            received.unlink(missing_ok=True)
            return identity, self._intake.refused(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "Study Instance UID differs from the URL's")
        outcome = self._intake.keep(identity, received, b"", STOW_CALLER, self._called_ae, batch)
        if isinstance(outcome, Refusal):
            received.unlink(missing_ok=True)
            return identity, outcome
        return identity, identity

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def intake(self) -> Intake:
        return self._intake


class StowRequest:
    """One STOW-RS body, split part by part as its bytes arrive (:meth:`write`), each part
    written once to its spool temporary and kept when it ends; :meth:`finish` gives the
    result. Not thread-safe: one request, one feeder."""

    def __init__(self, receiver: StowReceiver, boundary: bytes, study_uid: str | None,
                 batch: int) -> None:
        self._receiver = receiver
        self._study_uid = study_uid
        self._batch = batch
        self.result = StowResult()
        self.refusals: Counter[int] = Counter()
        self.first_refusal = ""
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0
        self._refusal: Refusal | None = None
        self._ended = False
        self._bytes = 0
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }, max_header_count=32, max_header_size=MAX_PART_HEADER_BYTES)

    # -- feeding ---------------------------------------------------------------------------
    def write(self, chunk: bytes) -> None:
        """The next bytes of the body; :class:`BadRequest` when they cannot be multipart."""
        self._bytes += len(chunk)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            self.abandon()
            raise BadRequest(f"the body is not multipart with the Content-Type's boundary "
                             f"({exc})") from exc

    def finish(self) -> StowResult:
        """The body is over: the result, or :class:`BadRequest` when it was incomplete."""
        try:
            if self._bytes == 0:
                raise BadRequest("the body is empty")
            if not self._ended:
                raise BadRequest("the body ends without its closing boundary")
            if not self.result.stored and not self.result.failed:
                raise BadRequest("the body has no instance")
            return self.result
        finally:
            self.abandon()
            self._receiver.end(self._batch)

    def abandon(self) -> None:
        """Remove a part that was being written (the request failed or ended early)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    # -- the parser's callbacks --------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers, self._size, self._refusal = {}, 0, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        intake = self._receiver.intake
        media = self._headers.get("content-type", DICOM_MEDIA_TYPE).split(";", 1)[0]
        media = media.strip().lower()
        if media != DICOM_MEDIA_TYPE:
            self._refusal = intake.refused(CANNOT_UNDERSTAND,
                                           f"part is {media[:40]}, not {DICOM_MEDIA_TYPE}")
            return
        self._refusal = intake.disk_refusal()
        if self._refusal is not None:
            return
        tmp_dir = self._receiver.tmp_dir
        self._path = temporary_name(tmp_dir / "stow.dcm", tmp_dir)
        try:
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed at the part's end
        except OSError as exc:
            self._path = None
            self._refusal = intake.refused(OUT_OF_RESOURCES, f"write failed ({exc.strerror})")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            return
        self._size += end - start
        limit = self._receiver.max_bytes
        if limit and self._size > limit:
            self.abandon()
            self._refusal = self._receiver.intake.refused(
                OUT_OF_RESOURCES, "instance larger than node.max_instance_mb")
            return
        try:
            self._file.write(data[start:end])
        except OSError as exc:  # the disk filled while the part arrived
            self.abandon()
            self._refusal = self._receiver.intake.refused(
                OUT_OF_RESOURCES, f"write failed ({exc.strerror})")

    def _part_end(self) -> None:
        if self._refusal is not None:
            self._refused(None, self._refusal)
            return
        if self._file is None or self._path is None:
            return
        self._file.close()
        self._file = None
        path, self._path = self._path, None
        identity, outcome = self._receiver.keep(path, self._study_uid, self._batch)
        if isinstance(outcome, Refusal):
            self._refused(identity, outcome)
        else:
            self.result.stored.append(outcome)

    def _refused(self, identity: InstanceIdentity | None, refusal: Refusal) -> None:
        self.result.failed.append((identity, refusal))
        self.refusals[refusal.code] += 1
        if not self.first_refusal:
            self.first_refusal = refusal.reason

    def _end(self) -> None:
        self._ended = True

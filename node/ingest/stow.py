"""STOW-RS in (PS3.18 10.5, Store Transaction): ``POST /dicomweb/studies[/{study}]`` with a
``multipart/related; type="application/dicom"`` body, one Part 10 instance per part.

Each instance goes the way a C-STORE goes (:class:`node.ingest.intake.Intake`: spool with
fsync, job store, series assembly), so it is stored and indexed before the response. The
response is the Store Instances Response Module (PS3.18 Table 10.5.3-1) in DICOM JSON: the
Referenced SOP Sequence for what was stored, the Failed SOP Sequence with a Failure Reason
(the DIMSE status a C-STORE would have got) for what was not. HTTP 200 when all were stored,
202 when some, 409 when none.

The body is streamed to a file on the spool's file system and split there (``mmap``), so an
instance of several hundred megabytes never sits in memory; each part's bytes are copied to
their own spool temporary, which the spool then adopts.
"""

from __future__ import annotations

import logging
import mmap
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.dicomfile import InstanceIdentity, UnreadableInstance, read_identity
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
_COPY_CHUNK = 8 * 1024 * 1024


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


def split_parts(body: mmap.mmap | bytes, boundary: bytes
                ) -> Iterator[tuple[dict[str, str], int, int]]:
    """(headers, start, end) of each part of a multipart body (RFC 2046 5.1.1)."""
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    if position < 0:
        raise BadRequest("the body has no part with the Content-Type's boundary")
    while True:
        position += len(delimiter)
        if body[position:position + 2] == b"--":
            return  # the close delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise BadRequest("a part ends before its headers")
        if body[line_end:line_end + 4] == b"\r\n\r\n":
            header_block, start = b"", line_end + 4
        else:
            headers_end = body.find(b"\r\n\r\n", line_end)
            if headers_end < 0:
                raise BadRequest("a part's headers do not end")
            header_block, start = body[line_end + 2:headers_end], headers_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise BadRequest("the body ends without its closing boundary")
        headers = {}
        for line in bytes(header_block).decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        yield headers, start, end
        position = end + 2


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

    def store(self, body: Path, content_type: str, study_uid: str | None,
              batch: int) -> StowResult:
        """Store every part of ``body``; ``batch`` names the request for series bookkeeping."""
        boundary = boundary_of(content_type)
        result = StowResult()
        if body.stat().st_size == 0:
            raise BadRequest("the body is empty")
        try:
            with open(body, "rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                       access=mmap.ACCESS_READ) as mapped:
                for headers, start, end in split_parts(mapped, boundary):
                    identity, outcome = self._part(mapped, headers, start, end, study_uid,
                                                   batch)
                    if isinstance(outcome, Refusal):
                        result.failed.append((identity, outcome))
                    else:
                        result.stored.append(outcome)
        finally:
            if self._on_end is not None:
                try:
                    self._on_end(batch, True)
                except Exception:
                    log.exception("series bookkeeping failed after a STOW-RS request")
        if not result.stored and not result.failed:
            raise BadRequest("the body has no instance")
        return result

    def _part(self, body: mmap.mmap, headers: dict[str, str], start: int, end: int,
              study_uid: str | None, batch: int
              ) -> tuple[InstanceIdentity | None, InstanceIdentity | Refusal]:
        media = headers.get("content-type", DICOM_MEDIA_TYPE).split(";", 1)[0].strip().lower()
        if media != DICOM_MEDIA_TYPE:
            return None, self._intake.refused(CANNOT_UNDERSTAND,
                                              f"part is {media}, not {DICOM_MEDIA_TYPE}")
        refusal = self._intake.disk_refusal()
        if refusal is not None:
            return None, refusal
        if self._max_bytes and end - start > self._max_bytes:
            return None, self._intake.refused(OUT_OF_RESOURCES,
                                              "instance larger than node.max_instance_mb")
        received = temporary_name(self.tmp_dir / "stow.dcm", self.tmp_dir)
        try:
            with open(received, "wb") as handle:
                for offset in range(start, end, _COPY_CHUNK):
                    handle.write(body[offset:min(end, offset + _COPY_CHUNK)])
            with open(received, "rb") as handle:
                identity = read_identity(handle)
        except UnreadableInstance as exc:
            received.unlink(missing_ok=True)
            log.warning("STOW-RS instance refused, 0xC210: %s", exc)
            return None, self._intake.refused(CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            received.unlink(missing_ok=True)
            log.error("STOW-RS instance refused, 0xA700: %s", exc.strerror)
            return None, self._intake.refused(OUT_OF_RESOURCES, "write failed")
        if study_uid is not None and identity.study_instance_uid != study_uid:
            received.unlink(missing_ok=True)
            return identity, self._intake.refused(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "Study Instance UID differs from the URL's")
        outcome = self._intake.keep(identity, received, b"", STOW_CALLER, self._called_ae, batch)
        if isinstance(outcome, Refusal):
            received.unlink(missing_ok=True)
            return identity, outcome
        return identity, identity

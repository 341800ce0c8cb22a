"""Keeping one received instance: spool it (fsync), index it in the job store, tell the series
assembler. Shared by the Storage SCP (:mod:`node.ingest.dimse`) and STOW-RS
(:mod:`node.ingest.stow`), so both give the same durability and the same refusals, as DIMSE
status codes (PS3.4 B.2.3; PS3.18 uses them too as the Failure Reason, 0008,1197):

- ``0xA700`` out of resources: free disk under ``node.min_free_disk_mb``, an instance larger
  than ``node.max_instance_mb``, the write failed, the job store is unavailable;
- ``0xA900`` data set does not match SOP class;
- ``0xC210`` cannot understand: not readable, or lacking the UIDs the node needs.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.dicom.files import InstanceIdentity
from node.domain import InstanceRef, StoreOutcome
from node.runtime import metrics
from node.store.database import StoreUnavailable
from node.store.spool import InstanceStorage

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210

InstanceRecorder = Callable[[InstanceRef, float], StoreOutcome]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an instance was not kept: a DIMSE status code and a short reason."""

    code: int
    reason: str


class Intake:
    """Spool, index and announce instances for one transport (``dimse`` or ``stow``)."""

    def __init__(self, spool: InstanceStorage, record: InstanceRecorder,
                 on_recorded: Callable[[StoreOutcome, int], None], clock: Callable[[], float],
                 *, min_free_mb: int, transport: str) -> None:
        self._spool = spool
        self._record = record
        self._on_recorded = on_recorded
        self._clock = clock
        self._min_free_mb = min_free_mb
        self.transport = transport

    @property
    def spool(self) -> InstanceStorage:
        return self._spool

    def disk_refusal(self) -> Refusal | None:
        """A refusal when free disk is below ``node.min_free_disk_mb``."""
        if self._min_free_mb and self._spool.free_bytes() < self._min_free_mb * 1024 * 1024:
            return self.refused(OUT_OF_RESOURCES, "disk space below configured floor")
        return None

    def refused(self, code: int, reason: str) -> Refusal:
        metrics.INSTANCES_REFUSED.labels(self.transport, f"0x{code:04X}").inc()
        return Refusal(code, reason)

    def keep(self, identity: InstanceIdentity, received: Path | None, encoded: bytes,
             calling_ae: str, called_ae: str, batch: int) -> StoreOutcome | Refusal:
        """Write the instance (``received``: a file on the spool's file system, adopted; else
        ``encoded``), index it, and tell the assembler (``batch``: the association or request
        it came in). An assembler failure is logged: the instance is kept and indexed."""
        path = self._spool.path_for(
            identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid)
        try:
            size = (self._spool.adopt(received, path) if received
                    else self._spool.write(path, (encoded,)))
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else "write failed"
            log.error("instance from %s refused, 0xA700: %s (%s)", calling_ae, reason,
                      exc.strerror)
            return self.refused(OUT_OF_RESOURCES, reason)
        ref = identity.ref(str(path), size, calling_ae, called_ae)
        try:
            outcome = self._record(ref, self._clock())
        except StoreUnavailable as exc:  # the file is spooled; the sender re-sends it later
            log.error("instance from %s refused, 0xA700: %s", calling_ae, exc)
            return self.refused(OUT_OF_RESOURCES, "job store unavailable; try again later")
        metrics.INSTANCES_RECEIVED.labels(self.transport).inc()
        metrics.BYTES_RECEIVED.labels(self.transport).inc(size)
        if outcome.duplicate:
            log.info("duplicate SOP Instance %s from %s replaced the earlier copy",
                     identity.sop_instance_uid, calling_ae)
        try:
            self._on_recorded(outcome, batch)
        except Exception:  # stored and indexed: the sender must hear success, or it re-sends
            log.exception("series bookkeeping failed after storing an instance; it is retried")
        return outcome

"""The audit trail: who did what, kept in the job store (``audit`` table) and read with
``ainode audit``. Associations accepted and rejected (calling AE title, address, why),
instances received per association, jobs done and failed (model and version), results sent
and given up, operators' requeues: the events of PS3.15 A.5 (DICOM audit messages). No
patient data: AE titles, addresses, UIDs, counts and reasons only.

Writing a line never fails the operation it records: a store that cannot take it is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from node.store.jobs import JobStore

log = logging.getLogger(__name__)

Audit = Callable[[str, str, str], None]  # (actor, action, detail)


def no_audit(actor: str, action: str, detail: str) -> None:
    """For components run without a job store (unit tests of one module)."""


class AuditTrail:
    """Records audit lines in ``store``; an instance is an :data:`Audit` callable."""

    def __init__(self, store: JobStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def __call__(self, actor: str, action: str, detail: str) -> None:
        try:
            self._store.audit(actor, action, detail, self._clock())
        except Exception as exc:  # the trail must not stop what it records
            log.error("audit line not recorded (%s): %s by %s", exc.__class__.__name__,
                      action, actor)

"""The audit trail: who did what, kept in the job store (``audit`` table), read with
``ainode audit`` and forwarded as DICOM audit messages (:mod:`node.audit.atna`). Associations
accepted and rejected (calling AE title, address, why), instances received per series, jobs
done and failed (model and version), results sent and given up, deletions, starts, stops and
configuration changes, operators' requeues: the events of PS3.15 A.5. No patient data: AE
titles, addresses, UIDs, counts and reasons only.

Writing a line never fails the operation it records: a store that cannot take it is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from node.domain import AuditEvent
from node.settings import Settings
from node.store.jobs import JobStore

log = logging.getLogger(__name__)

# PS3.15 A.5.3 EventOutcomeIndicator values
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12
OUTCOME_NAMES = {SUCCESS: "success", MINOR_FAILURE: "minor failure",
                 SERIOUS_FAILURE: "serious failure", MAJOR_FAILURE: "major failure"}


class Audit(Protocol):
    """Records one audit line: who (``actor``), what (``action``), a readable ``detail``;
    optionally the actor's network ``address``, the (kind, UID) ``objects`` it concerns
    (``study``, ``series``) and its PS3.15 ``outcome``."""

    def __call__(self, actor: str, action: AuditEvent, detail: str, *, address: str = "",
                 objects: Sequence[tuple[str, str]] = (), outcome: int = SUCCESS) -> None: ...


def no_audit(actor: str, action: AuditEvent, detail: str, *, address: str = "",
             objects: Sequence[tuple[str, str]] = (), outcome: int = SUCCESS) -> None:
    """For components run without a job store (unit tests of one module)."""


class AuditTrail:
    """Records audit lines in ``store``; an instance is an :class:`Audit`."""

    def __init__(self, store: JobStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def __call__(self, actor: str, action: AuditEvent, detail: str, *, address: str = "",
                 objects: Sequence[tuple[str, str]] = (), outcome: int = SUCCESS) -> None:
        try:
            self._store.audit(actor, action, detail, self._clock(), address=address,
                              objects=objects, outcome=outcome)
        except Exception as exc:  # the trail must not stop what it records
            log.error("audit line not recorded (%s): %s by %s", exc.__class__.__name__,
                      action, actor)


def node_name(settings: Settings) -> str:
    """How the trail names this node: its AE title on this host."""
    return f"{settings.node.ae_title}@{socket.gethostname()}"


def settings_digests(settings: Settings) -> dict[str, str]:
    """A digest of each configuration section (never the values: they hold passwords)."""
    sections = json.loads(settings.model_dump_json())
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
            for name, value in sections.items()}


def record_start(store: JobStore, settings: Settings, roles: str) -> None:
    """Audit a start (AuditEvent.NODE_STARTED, PS3.15 A.5.3.1 Application Start) and, when the
    configuration differs from this node's previous start, which sections changed
    (A.5.3.11 Security Alert: Software Configuration)."""
    trail = AuditTrail(store)
    name = node_name(settings)
    trail(name, AuditEvent.NODE_STARTED, f"roles {roles}, pid {os.getpid()}")
    digests = settings_digests(settings)
    try:
        changed = store.settings_digests(name, digests)
    except Exception as exc:
        log.error("configuration digests not recorded (%s)", exc.__class__.__name__)
        return
    if changed:
        trail(name, AuditEvent.CONFIGURATION_CHANGED, "sections " + ", ".join(
            f"{section} ({before or 'new'} -> {digests.get(section, 'removed')})"
            for section, before in sorted(changed.items())))


def record_stop(store: JobStore, settings: Settings, roles: str, outcome: int = SUCCESS) -> None:
    """Audit a stop (PS3.15 A.5.3.1 Application Stop)."""
    AuditTrail(store)(node_name(settings), AuditEvent.NODE_STOPPED,
                      f"roles {roles}, pid {os.getpid()}", outcome=outcome)

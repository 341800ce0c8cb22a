"""Start-up recovery: drop partial temporaries and re-index spool files the index lacks.

Covers a crash (or power loss) between the spool's fsync and the index commit: such an
instance may or may not have been acknowledged, so it is kept and joins its series again, with
the calling and called AE titles its file meta recorded at reception (0002,0017/0018).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from node.dicom.files import UnreadableInstance, read_identity
from node.store.jobs import JobStore
from node.store.spool import InstanceStorage

log = logging.getLogger(__name__)

RECOVERED_AE = "(recovered)"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    temporaries_removed: int
    reindexed: int
    unreadable: int


def recover(
    spool: InstanceStorage, store: JobStore, now: float, settle_s: float = 0.0
) -> RecoveryReport:
    """``settle_s`` > 0 when other receivers may be writing to the same spool (a receiver
    role started alone): only files untouched for that long are removed or re-indexed."""
    cutoff = now - settle_s if settle_s else None
    removed = spool.remove_temporaries(cutoff)
    indexed = set(store.instance_paths())
    reindexed = unreadable = 0
    for path in spool.iter_files():
        if str(path) in indexed:
            continue
        try:
            if cutoff is not None and path.stat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        try:
            with open(path, "rb") as handle:
                identity = read_identity(handle)
        except (UnreadableInstance, OSError) as exc:
            unreadable += 1
            log.error("spool file %s cannot be re-indexed: %s", path.name, exc)
            continue
        ref = identity.ref(
            str(path),
            path.stat().st_size,
            identity.sending_ae or RECOVERED_AE,
            identity.receiving_ae or RECOVERED_AE,
        )
        store.record_instance(ref, now)
        reindexed += 1
    if removed or reindexed or unreadable:
        log.warning(
            "recovery: %d partial temporaries removed, %d instances re-indexed, %d unreadable",
            removed,
            reindexed,
            unreadable,
        )
    return RecoveryReport(removed, reindexed, unreadable)

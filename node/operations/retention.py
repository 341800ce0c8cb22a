"""Retention: received instances and results are removed once nothing needs them.

A series (all its revisions) is *settled* when every revision is complete and routed, no job
of it is queued or running and no result of it waits in the outbox. Settled and delivered (no
job failed, no result given up), it goes ``retention.days`` after it settled; settled with a
failure, ``retention.failed_days`` after (an operator may requeue meanwhile). Above
``retention.high_water_percent`` of the disk, settled series go oldest first (delivered ones
before failed ones) regardless of age. A series with anything pending is never touched.

Removal happens in one transaction under the series' lock (the lock a receiver takes to
record an instance), so an instance that arrives meanwhile opens a new revision that is kept:
its file, written before it is recorded, is newer than the removed series' and is left. The
instance index rows go with the files (a study sent again is new), the series rows stay,
marked ``purged_at``, with their jobs; each removal is one audit line ("deleted").
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from node.audit.trail import Audit, no_audit
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.layout import DataDir
from node.store.settled import Settled, SettledSeries, SpoolRow

log = logging.getLogger(__name__)

DAY_S = 86400.0
# a spool file modified this long after its instance was recorded is a copy sent again since
NEWER_COPY_S = 5.0

def disk_used_percent(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return 100.0 * (usage.total - usage.free) / usage.total if usage.total else 0.0


class Retention:
    """One :meth:`sweep` removes what retention allows; run periodically by the sender."""

    def __init__(self, settings: Settings, store: JobStore, clock: Callable[[], float],
                 audit: Audit = no_audit,
                 disk_used: Callable[[Path], float] = disk_used_percent) -> None:
        self._settings = settings
        self._settled = SettledSeries(store)
        self._clock = clock
        self._audit = audit
        self._disk_used = disk_used

    def sweep(self) -> int:
        """Remove expired series, then (above the high-water mark) the oldest settled ones;
        returns how many series were removed."""
        retention = self._settings.retention
        if not retention.enabled:
            return 0
        now = self._clock()
        candidates = self._settled.oldest_first()
        removed = 0
        for series in candidates:
            keep_s = (retention.failed_days if series.failed else retention.days) * DAY_S
            if now - series.settled_at >= keep_s:
                removed += self._remove(series.series_uid, self._reason(series, keep_s))
        data_dir = self._settings.node.data_dir
        used = self._disk_used(data_dir)
        if used <= retention.high_water_percent:
            return removed
        remaining = self._settled.oldest_first()
        for series in sorted(remaining, key=lambda s: (s.failed, s.settled_at)):
            if used <= retention.high_water_percent:
                break
            removed += self._remove(series.series_uid, (
                f"disk {used:.0f} % used, above the high-water mark of "
                f"{retention.high_water_percent:.0f} %"))
            used = self._disk_used(data_dir)
        return removed

    @staticmethod
    def _reason(series: Settled, keep_s: float) -> str:
        what = "failed" if series.failed else "delivered"
        return f"{what} {keep_s / DAY_S:g} day(s) ago or more (retention)"

    def _remove(self, series_uid: str, reason: str) -> int:
        """Remove one series' files and index rows if it is still settled; 1 when removed."""
        data_dir = self._settings.node.data_dir
        removed = {"files": 0, "bytes": 0}

        def remove_files(rows: list[SpoolRow]) -> str:
            removed["files"] = sum(_remove_spool_file(Path(r.path), r.received_at)
                                   for r in rows)
            removed["bytes"] = sum(r.size_bytes for r in rows)
            shutil.rmtree(DataDir(data_dir).results(series_uid), ignore_errors=True)
            return (f"series {series_uid}: {removed['files']} instance file(s) "
                    f"({removed['bytes'] / 1e6:.1f} MB) and its results; {reason}")

        try:
            rows = self._settled.purge(series_uid, self._clock(), remove_files)
        except Exception:
            log.exception("retention: series %s not removed", series_uid)
            return 0
        if rows is None:  # something arrived or was requeued meanwhile
            return 0
        files, size = removed["files"], removed["bytes"]
        for row in rows:  # the folders the spool made, when now empty
            _remove_empty_parents(Path(row.path).parent, 2)
        log.info("retention removed series %s: %d file(s), %.1f MB (%s)", series_uid, files,
                 size / 1e6, reason)
        return 1


def _remove_spool_file(path: Path, received_at: float) -> int:
    try:
        if path.stat().st_mtime > received_at + NEWER_COPY_S:
            return 0  # a copy sent again since, not yet recorded: its receiver keeps it
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _remove_empty_parents(folder: Path, levels: int) -> None:
    for _ in range(levels):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = folder.parent

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
from dataclasses import dataclass
from pathlib import Path

from node.audit.trail import Audit, no_audit
from node.domain import AuditEvent, JobState, SeriesState
from node.settings import Settings
from node.store.database import Connection
from node.store.jobs import JobStore
from node.store.layout import DataDir
from node.store.outbox import DEAD, QUEUED

log = logging.getLogger(__name__)

DAY_S = 86400.0
# a spool file modified this long after its instance was recorded is a copy sent again since
NEWER_COPY_S = 5.0

_SETTLED = f"""
SELECT s.series_uid, MIN(s.study_uid),
  MAX(COALESCE(s.completed_at, s.last_at)),
  (SELECT COUNT(*) FROM jobs j WHERE j.series_uid=s.series_uid
     AND j.state IN ('{JobState.QUEUED}', '{JobState.RUNNING}')),
  (SELECT COUNT(*) FROM jobs j WHERE j.series_uid=s.series_uid AND j.state='{JobState.FAILED}'),
  (SELECT MAX(j.updated_at) FROM jobs j WHERE j.series_uid=s.series_uid),
  (SELECT COUNT(*) FROM outbox o JOIN jobs j ON j.id=o.job_id
     WHERE j.series_uid=s.series_uid AND o.state='{QUEUED}'),
  (SELECT COUNT(*) FROM outbox o JOIN jobs j ON j.id=o.job_id
     WHERE j.series_uid=s.series_uid AND o.state='{DEAD}'),
  (SELECT MAX(o.updated_at) FROM outbox o JOIN jobs j ON j.id=o.job_id
     WHERE j.series_uid=s.series_uid)
FROM series s WHERE s.purged_at IS NULL {{only}}
GROUP BY s.series_uid
HAVING SUM(CASE WHEN s.state <> '{SeriesState.COMPLETE}' OR s.route_state IS NULL
           THEN 1 ELSE 0 END) = 0
"""


@dataclass(frozen=True)
class Settled:
    """A series nothing is pending for: when it settled, and whether anything failed."""

    series_uid: str
    study_uid: str
    settled_at: float
    failed: bool


def settled_series(db: Connection, series_uid: str | None = None) -> list[Settled]:
    """Series (or the one named) with nothing pending, oldest settled first."""
    only = "AND s.series_uid=?" if series_uid is not None else ""
    rows = db.execute(_SETTLED.format(only=only),
                      (series_uid,) if series_uid is not None else ()).fetchall()
    found = []
    for (uid, study, completed, running, failed_jobs, jobs_at, waiting, dead,
         outbox_at) in rows:
        if running or waiting:
            continue
        settled = max(t for t in (completed, jobs_at, outbox_at) if t is not None)
        found.append(Settled(uid, study, float(settled), bool(failed_jobs or dead)))
    return sorted(found, key=lambda s: s.settled_at)


def disk_used_percent(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return 100.0 * (usage.total - usage.free) / usage.total if usage.total else 0.0


class Retention:
    """One :meth:`sweep` removes what retention allows; run periodically by the sender."""

    def __init__(self, settings: Settings, store: JobStore, clock: Callable[[], float],
                 audit: Audit = no_audit,
                 disk_used: Callable[[Path], float] = disk_used_percent) -> None:
        self._settings = settings
        self._store = store
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
        with self._store.reading() as db:
            candidates = settled_series(db)
        removed = 0
        for series in candidates:
            keep_s = (retention.failed_days if series.failed else retention.days) * DAY_S
            if now - series.settled_at >= keep_s:
                removed += self._remove(series.series_uid, self._reason(series, keep_s))
        data_dir = self._settings.node.data_dir
        used = self._disk_used(data_dir)
        if used <= retention.high_water_percent:
            return removed
        with self._store.reading() as db:
            remaining = settled_series(db)
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
        try:
            with self._store.transaction() as db:
                self._store.database.lock(db, series_uid)  # what record_instance takes
                still = settled_series(db, series_uid)
                if not still:  # something arrived or was requeued meanwhile
                    return 0
                rows = db.execute("SELECT path, received_at, size_bytes FROM instances"
                                  " WHERE series_uid=?", (series_uid,)).fetchall()
                files = sum(_remove_spool_file(Path(p), float(at)) for p, at, _ in rows)
                size = sum(int(s) for _, _, s in rows)
                results = DataDir(data_dir).results(series_uid)
                shutil.rmtree(results, ignore_errors=True)
                db.execute("DELETE FROM instances WHERE series_uid=?", (series_uid,))
                now = self._clock()
                db.execute("UPDATE series SET purged_at=? WHERE series_uid=?",
                           (now, series_uid))
                self._store.audit(
                    "node", AuditEvent.DELETED,
                    f"series {series_uid}: {files} instance file(s) "
                    f"({size / 1e6:.1f} MB) and its results; {reason}", now, db,
                    objects=[("study", still[0].study_uid), ("series", series_uid)])
        except Exception:
            log.exception("retention: series %s not removed", series_uid)
            return 0
        for path, _, _ in rows:  # the folders the spool made, when now empty
            _remove_empty_parents(Path(path).parent, 2)
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

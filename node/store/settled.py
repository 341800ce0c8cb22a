"""Series nothing is pending for (*settled*), and their purge: the retention's reads and
writes of the job store (policy and files: :mod:`node.operations.retention`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.domain import AuditEvent, JobState, SeriesState
from node.store.database import Connection
from node.store.jobs import JobStore
from node.store.outbox import DEAD, QUEUED

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


@dataclass(frozen=True)
class SpoolRow:
    """One instance file of a series as indexed."""

    path: str
    received_at: float
    size_bytes: int


class SettledSeries:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def oldest_first(self) -> list[Settled]:
        with self._store.reading() as db:
            return settled_series(db)

    def purge(self, series_uid: str, now: float,
              remove_files: Callable[[list[SpoolRow]], str]) -> list[SpoolRow] | None:
        """If the series is still settled: ``remove_files`` (which returns the audit line's
        detail) runs, then its instance rows go and the series is marked purged, audited
        ("deleted"), all in one transaction under the series' lock (the lock a receiver takes
        to record an instance). ``None`` when something arrived or was requeued meanwhile."""
        with self._store.transaction() as db:
            self._store.database.lock(db, series_uid)
            still = settled_series(db, series_uid)
            if not still:
                return None
            rows = [SpoolRow(str(p), float(at), int(size)) for p, at, size in db.execute(
                "SELECT path, received_at, size_bytes FROM instances WHERE series_uid=?",
                (series_uid,)).fetchall()]
            detail = remove_files(rows)
            db.execute("DELETE FROM instances WHERE series_uid=?", (series_uid,))
            db.execute("UPDATE series SET purged_at=? WHERE series_uid=?", (now, series_uid))
            self._store.audit("node", AuditEvent.DELETED, detail, now, db,
                              objects=[("study", still[0].study_uid), ("series", series_uid)])
        return rows

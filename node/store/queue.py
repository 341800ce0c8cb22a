"""The job queue in the job store: one job per (series revision, pipeline).

States: queued -> running (claimed with a lease) -> done | queued again (retry with backoff)
| failed (a reason no retry can fix, or attempts exhausted: the dead letter). A running job
whose lease expired (the worker crashed) is claimed again, so no job is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from node.domain import Job, JobState, SeriesKey
from node.store.jobs import JobStore


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: int
    series_instance_uid: str
    revision: int
    pipeline: str
    model: str
    state: JobState
    attempts: int
    error: str | None
    result: dict[str, Any] | None
    updated_at: float


class JobQueue:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def enqueue(
        self, key: SeriesKey, pipelines: list[tuple[str, str]], now: float, priority: int = 0
    ) -> int:
        """Queue one job per ``(pipeline, model)``; re-queuing the same revision is a no-op."""
        with self._store.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO jobs (series_uid, revision, pipeline, model, priority,"
                " state, not_before, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        key.series_instance_uid,
                        key.revision,
                        name,
                        model,
                        priority,
                        JobState.QUEUED,
                        now,
                        now,
                        now,
                    )
                    for name, model in pipelines
                ],
            )
            return db.total_changes - before

    def claim(self, now: float, lease_s: float) -> Job | None:
        """The next ready job (urgent first, then oldest), leased for ``lease_s`` seconds."""
        with self._store.transaction() as db:
            row = db.execute(
                "SELECT id, series_uid, revision, pipeline, model, attempts FROM jobs"
                " WHERE (state=? AND not_before<=?) OR (state=? AND lease_until<?)"
                " ORDER BY priority DESC, id LIMIT 1",
                (JobState.QUEUED, now, JobState.RUNNING, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state=?, attempts=attempts+1, lease_until=?, updated_at=?"
                " WHERE id=?",
                (JobState.RUNNING, now + lease_s, now, row[0]),
            )
        return Job(row[0], SeriesKey(row[1], row[2]), row[3], row[4], row[5] + 1)

    def _finish(self, job_id: int, now: float, **columns: Any) -> None:
        assignments = ", ".join(f"{name}=?" for name in columns)
        with self._store.transaction() as db:
            db.execute(
                f"UPDATE jobs SET {assignments}, lease_until=NULL, updated_at=? WHERE id=?",
                (*columns.values(), now, job_id),
            )

    def complete(self, job_id: int, result: dict[str, Any], now: float) -> None:
        self._finish(job_id, now, state=JobState.DONE, error=None, result=json.dumps(result))

    def retry(self, job_id: int, error: str, delay_s: float, now: float) -> None:
        self._finish(job_id, now, state=JobState.QUEUED, error=error, not_before=now + delay_s)

    def fail(self, job_id: int, error: str, now: float) -> None:
        self._finish(job_id, now, state=JobState.FAILED, error=error)

    def jobs(self, limit: int = 100) -> list[JobSummary]:
        with self._store.reading() as db:
            rows = db.execute(
                "SELECT id, series_uid, revision, pipeline, model, state, attempts, error,"
                " result, updated_at FROM jobs ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            JobSummary(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                JobState(r[5]),
                r[6],
                r[7],
                json.loads(r[8]) if r[8] else None,
                r[9],
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        with self._store.reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state.value: dict(rows).get(state.value, 0) for state in JobState}

"""The job queue in the job store: one job per (series revision, pipeline).

States: queued -> running (claimed with a lease and an owner token) -> done | queued again
(retry with backoff) | failed (a reason no retry can fix, or attempts exhausted: the dead
letter) | superseded (a newer revision of the series replaced it).

A running job's lease is renewed by a heartbeat while its worker lives; a lease that runs out
(the worker died or hangs) makes the job claimable again. Only the claim's owner can finish a
job, so a job re-claimed elsewhere is never finished (or delivered) twice. Attempts that
crashed or raised count against the cap, checked at claim time, so a job that kills its worker
ends ``failed`` instead of looping; transient failures (backend down) and stops do not count.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.domain import Job, JobState, SeriesKey
from node.store.database import Connection
from node.store.jobs import JobStore
from node.store.lease import claim_rows
from node.store.requeue import requeue_rows

RUNNING, QUEUED = JobState.RUNNING.value, JobState.QUEUED.value


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
    superseded_by: int | None = None


class LeaseLost(RuntimeError):
    """The job is no longer this worker's: its lease was taken over, or it was superseded."""


class JobQueue:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def enqueue(
        self, key: SeriesKey, pipelines: list[tuple[str, str]], now: float, priority: int = 0
    ) -> int:
        """Queue one job per ``(pipeline, model)``; re-queuing the same revision is a no-op."""
        with self._store.transaction() as db:
            added = sum(
                db.execute(
                    "INSERT INTO jobs (series_uid, revision, pipeline, model, priority, state,"
                    " not_before, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT DO NOTHING",
                    (key.series_instance_uid, key.revision, name, model, priority, QUEUED,
                     now, now, now),
                ).rowcount
                for name, model in pipelines
            )
            if added:
                self._store.notify(db, "jobs")
            return added

    def claim(self, now: float, lease_s: float, max_attempts: int = 1_000_000) -> Job | None:
        """The next ready job (urgent first, then oldest), leased for ``lease_s`` seconds.

        Jobs that already used ``max_attempts`` counted attempts (e.g. each one killed its
        worker) are failed here instead of being run again. Looks first without writing: the
        workers wake whenever another process commits (each received instance, on SQLite), and
        a write transaction each time would queue behind, and hold up, the receiver's."""
        with self._store.reading() as db:
            ready = db.execute("SELECT 1 FROM jobs WHERE (state=? AND not_before<=?) OR"
                               " (state=? AND lease_until<?) LIMIT 1",
                               (QUEUED, now, RUNNING, now)).fetchone()
        if ready is None:
            return None
        with self._store.transaction() as db:
            db.execute(
                "UPDATE jobs SET state=?, owner=NULL, lease_until=NULL, updated_at=?,"
                " error='gave up after ' || (attempts - transient) || ' attempts: '"
                " || COALESCE(error, 'the worker stopped (crashed, killed or hung)')"
                " WHERE attempts - transient >= ? AND ((state=? AND not_before<=?)"
                " OR (state=? AND lease_until<?))",
                (JobState.FAILED, now, max_attempts, QUEUED, now, RUNNING, now),
            )
            owner = uuid.uuid4().hex
            claimed = claim_rows(
                db, self._store.database,
                "SELECT id, series_uid, revision, pipeline, model, attempts - transient, state,"
                " first_failed_at, transient FROM jobs"
                " WHERE (state=? AND not_before<=?) OR (state=? AND lease_until<?)"
                " ORDER BY priority DESC, id LIMIT 1", (QUEUED, now, RUNNING, now),
                "UPDATE jobs SET state=?, attempts=attempts+1, lease_until=?, owner=?,"
                " error=COALESCE(?, error), updated_at=? WHERE id=?",
                lambda row: (RUNNING, now + lease_s, owner, _dead_worker(row[6]), now, row[0]))
            if not claimed:
                return None
            row = claimed[0]
        return Job(
            row[0], SeriesKey(row[1], row[2]), row[3], row[4], row[5] + 1, owner, row[7], row[8]
        )

    def heartbeat(self, jobs: list[Job], now: float, lease_s: float) -> list[Job]:
        """Extend the leases of ``jobs`` still held; returns those that are not any more."""
        lost: list[Job] = []
        with self._store.transaction() as db:
            for job in jobs:
                cursor = db.execute(
                    "UPDATE jobs SET lease_until=? WHERE id=? AND owner=? AND state=?",
                    (now + lease_s, job.id, job.owner, RUNNING),
                )
                if cursor.rowcount != 1:
                    lost.append(job)
        return lost

    def finish(
        self,
        job: Job,
        now: float,
        columns: dict[str, Any],
        also: Callable[[Connection], None] | None = None,
        *,
        transient: bool = False,
    ) -> None:
        """Set ``columns`` (and run ``also`` in the same transaction) if ``job`` is still this
        claim's; raises :class:`LeaseLost` otherwise, changing nothing. ``transient`` marks
        the attempt as not counted."""
        assignments = ", ".join(f"{name}=?" for name in columns)
        if transient:
            assignments += ", transient=transient+1"
        with self._store.transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {assignments}, lease_until=NULL, owner=NULL, updated_at=?"
                " WHERE id=? AND owner=? AND state=?",
                (*columns.values(), now, job.id, job.owner, RUNNING),
            )
            if cursor.rowcount != 1:
                raise LeaseLost(f"job {job.id} is no longer held by this worker")
            if columns.get("state") == QUEUED:
                self._store.notify(db, "jobs")
            if also is not None:
                also(db)

    def complete(
        self,
        job: Job,
        result: dict[str, Any],
        now: float,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        self.finish(
            job,
            now,
            {"state": JobState.DONE, "error": None, "result": json.dumps(result)},
            also,
        )

    def retry(
        self, job: Job, error: str, delay_s: float, now: float, *, counted: bool = True
    ) -> None:
        """Queue again after ``delay_s``; a transient failure (``counted=False``) does not use
        up an attempt and starts the retry window if none is open."""
        columns: dict[str, Any] = {"state": QUEUED, "error": error, "not_before": now + delay_s}
        if not counted:
            columns["first_failed_at"] = now if job.first_failed_at is None else job.first_failed_at
        self.finish(job, now, columns, transient=not counted)

    def fail(self, job: Job, error: str, now: float) -> None:
        self.finish(job, now, {"state": JobState.FAILED, "error": error})

    def release_held(self, jobs: list[Job], now: float) -> int:
        """Hand jobs back (the node is stopping): queued at once, the attempt not counted."""
        released = 0
        with self._store.transaction() as db:
            for job in jobs:
                released += db.execute(
                    "UPDATE jobs SET state=?, owner=NULL, lease_until=NULL, not_before=?,"
                    " transient=transient+1, error='handed back: the node stopped',"
                    " updated_at=? WHERE id=? AND owner=? AND state=?",
                    (QUEUED, now, now, job.id, job.owner, RUNNING),
                ).rowcount
            if released:
                self._store.notify(db, "jobs")
        return released

    def reset_running(self, now: float) -> int:
        """At start, with one node per job store: jobs left running belonged to a process that
        is gone. They are queued at once; the interrupted attempt counts (it may have been the
        job that killed the node)."""
        with self._store.transaction() as db:
            return db.execute(
                "UPDATE jobs SET state=?, owner=NULL, lease_until=NULL, not_before=?,"
                " error='the node stopped during the previous attempt', updated_at=?"
                " WHERE state=?",
                (QUEUED, now, now, RUNNING),
            ).rowcount

    def requeue(self, job_ids: list[int] | None, now: float,
                states: tuple[JobState, ...] = (JobState.FAILED,)) -> list[int]:
        """Jobs in ``states`` (failed; cancelled too for the admin API's retry), those named
        or all with ``None``, queued again with fresh attempts."""
        with self._store.transaction() as db:
            self._store.notify(db, "jobs")
            return [job_id for state in states for job_id in requeue_rows(
                db, "jobs", state, job_ids,
                "attempts=0, transient=0, first_failed_at=NULL, error=NULL", now,
            )]

    def cancel(self, job_id: int, reason: str, now: float) -> bool:
        """Stop a queued or running job (a running one's worker finds its lease gone and
        discards what it computes); ``False`` when it had ended already."""
        with self._store.transaction() as db:
            return bool(db.execute(
                "UPDATE jobs SET state=?, error=?, owner=NULL, lease_until=NULL, updated_at=?"
                " WHERE id=? AND state IN (?, ?)",
                (JobState.CANCELLED, reason, now, job_id, QUEUED, RUNNING)).rowcount)

    def jobs(self, limit: int = 100, state: JobState | None = None,
             pipeline: str | None = None) -> list[JobSummary]:
        """Newest first; only those in ``state`` and of ``pipeline`` when given."""
        conditions = [(f"{column}=?", value) for column, value in
                      (("state", state.value if state else None), ("pipeline", pipeline))
                      if value is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions) + " ") if conditions else ""
        with self._store.reading() as db:
            rows = db.execute(
                "SELECT id, series_uid, revision, pipeline, model, state, attempts, error,"
                " result, updated_at, superseded_by FROM jobs " + where
                + "ORDER BY id DESC LIMIT ?",
                (*(v for _, v in conditions), limit),
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
                r[10],
            )
            for r in rows
        ]

    def origin(self, job_id: int) -> tuple[str, str, str, str, str] | None:
        """(pipeline, model, result JSON, series UID, study UID) of a job; ``None`` when it
        is gone."""
        with self._store.reading() as db:
            row = db.execute("SELECT j.pipeline, j.model, j.result, j.series_uid, s.study_uid"
                             " FROM jobs j JOIN series s ON s.series_uid=j.series_uid"
                             " AND s.revision=j.revision WHERE j.id=?", (job_id,)).fetchone()
        if row is None:
            return None
        pipeline, model, result, series_uid, study_uid = (
            str(v) if v is not None else "" for v in row)
        return pipeline, model, result, series_uid, study_uid

    def counts(self) -> dict[str, int]:
        with self._store.reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state.value: dict(rows).get(state.value, 0) for state in JobState}


def _dead_worker(state: str) -> str | None:
    """Why a job claimed while still running is claimed again: its lease ran out."""
    if state == RUNNING:
        return "the worker stopped during the previous attempt (crashed, killed or hung)"
    return None

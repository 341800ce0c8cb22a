"""Withdrawn results (``rejections``): a job's delivered objects that the PACS is told to reject
with an IHE IOCM rejection note, either superseded by a newer revision's results (``quality``)
or withdrawn by an operator (``safety``). One row per job, so a result is withdrawn once.

pending (recorded, its notes not written yet) -> queued (one note per destination that
received the objects, in the outbox) | none (no destination to tell: nothing was delivered, or
no destination takes rejection notes; ``detail`` says which) | failed (a note could not be
written; withdrawing the result again retries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.store.database import Connection
from node.store.jobs import JobStore
from node.store.outbox import RESULT_KINDS, SENT, SUPERSEDED, ResultToSend, put

PENDING, QUEUED, NONE, FAILED = "pending", "queued", "none", "failed"
QUALITY, SAFETY = "quality", "safety"


@dataclass(frozen=True)
class Rejection:
    job_id: int
    reason: str  # QUALITY or SAFETY
    comment: str
    actor: str
    replaced_by: int | None
    state: str
    detail: str
    created_at: float


@dataclass(frozen=True)
class Delivered:
    """One result object that reached one destination."""

    destination: str
    path: str
    sop_instance_uid: str
    kind: str


_COLUMNS = "job_id, reason, comment, actor, replaced_by, state, detail, created_at"


def record(db: Connection, job_id: int, reason: str, comment: str, actor: str, now: float,
           replaced_by: int | None = None) -> bool:
    """Record the withdrawal inside the caller's transaction; False when the job's results
    were withdrawn already. Results still queued for delivery are not sent any more."""
    inserted = db.execute(
        "INSERT INTO rejections (job_id, reason, comment, actor, replaced_by, state,"
        " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (job_id) DO UPDATE SET"
        " state=excluded.state, reason=excluded.reason, comment=excluded.comment,"
        " actor=excluded.actor, updated_at=excluded.updated_at WHERE rejections.state=?",
        (job_id, reason, comment, actor, replaced_by, PENDING, now, now, FAILED)).rowcount
    if inserted:
        db.execute("UPDATE outbox SET state=?, error=?, lease_until=NULL, updated_at=?"
                   " WHERE job_id=? AND state='queued' AND after_job IS NULL",
                   (SUPERSEDED, f"withdrawn: {comment}", now, job_id))
    return bool(inserted)


def supersede(db: Connection, job_id: int, series_uid: str, revision: int, pipeline: str,
              now: float) -> list[int]:
    """Inside the caller's transaction (job ``job_id`` finishing revision ``revision``):
    withdraw the results of the same pipeline on older revisions of the series, replaced by
    this job's; returns the jobs withdrawn."""
    rows = db.execute(
        "SELECT id FROM jobs WHERE series_uid=? AND revision<? AND pipeline=? AND state='done'"
        " AND id NOT IN (SELECT job_id FROM rejections) ORDER BY id",
        (series_uid, revision, pipeline)).fetchall()
    withdrawn = [int(row[0]) for row in rows]
    for old in withdrawn:
        record(db, old, QUALITY, f"superseded by revision {revision}", "node", now,
               replaced_by=job_id)
    return withdrawn


class Rejections:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def withdraw(self, job_id: int, reason: str, comment: str, actor: str, now: float,
                 audit: Callable[[Connection], None]) -> str:
        """``withdrawn``, ``already`` (withdrawn before) or ``unknown`` (no finished job
        ``job_id``); ``audit`` writes the audit line in the same transaction."""
        with self._store.transaction() as db:
            found = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if found is None or found[0] != "done":
                return "unknown"
            if not record(db, job_id, reason, comment, actor, now):
                return "already"
            audit(db)
            self._store.notify(db, "outbox")
            return "withdrawn"

    def get(self, job_id: int) -> Rejection | None:
        rows = self._store.query(f"SELECT {_COLUMNS} FROM rejections WHERE job_id=?", job_id)
        return Rejection(*rows[0]) if rows else None  # type: ignore[arg-type]

    def pending(self, limit: int = 20) -> list[Rejection]:
        rows = self._store.query(f"SELECT {_COLUMNS} FROM rejections WHERE state=?"
                                 " ORDER BY created_at LIMIT ?", PENDING, limit)
        return [Rejection(*row) for row in rows]  # type: ignore[arg-type]

    def listing(self, limit: int = 100) -> list[Rejection]:
        rows = self._store.query(f"SELECT {_COLUMNS} FROM rejections"
                                 " ORDER BY created_at DESC LIMIT ?", limit)
        return [Rejection(*row) for row in rows]  # type: ignore[arg-type]

    def delivered(self, job_id: int) -> list[Delivered]:
        """The job's SEG/SR/SC objects that reached a destination. An object a newer job
        delivered again under the same SOP Instance UID (the same model on the same images)
        belongs to that job's outbox row now, so it is never rejected."""
        marks = ",".join("?" * len(RESULT_KINDS))
        rows = self._store.query(
            "SELECT destination, path, sop_instance_uid, kind FROM outbox WHERE job_id=?"
            f" AND state=? AND kind IN ({marks}) ORDER BY destination, id",
            job_id, SENT, *RESULT_KINDS)
        return [Delivered(*row) for row in rows]  # type: ignore[arg-type]

    def failed(self, job_id: int, detail: str, now: float) -> None:
        with self._store.transaction() as db:
            db.execute("UPDATE rejections SET state=?, detail=?, updated_at=? WHERE job_id=?",
                       (FAILED, detail, now, job_id))

    def queue(self, job_id: int, notes: list[ResultToSend], after_job: int | None,
              detail: str, now: float) -> bool:
        """The rejection notes go to the outbox (each after ``after_job``'s results for its
        destination) and the withdrawal is settled, in one transaction; False (nothing done)
        when another sender on the store settled it first, so a note sent is never queued
        again."""
        with self._store.transaction() as db:
            settled = db.execute(
                "UPDATE rejections SET state=?, detail=?, updated_at=? WHERE job_id=?"
                " AND state=?", (QUEUED if notes else NONE, detail, now, job_id, PENDING))
            if not settled.rowcount:
                return False
            for note in notes:
                put(db, job_id, note, now, after_job=after_job)
            if notes:
                self._store.notify(db, "outbox")
            return True

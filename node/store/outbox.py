"""The outbox: results waiting for delivery, one row per (destination, SOP instance).

queued -> sent | queued again (backoff, within the retry window) | dead (refused, or the
window ran out) | superseded (its source series got a newer revision before it was sent),
with the reason kept. Re-encoding the same result (same deterministic SOP Instance UID)
re-queues its row instead of adding one, so a destination receives each object once per change.
Dead letters can be requeued by an operator (``ainode requeue results``).
"""

from __future__ import annotations

from dataclasses import dataclass

from node.store.database import Connection
from node.store.jobs import JobStore
from node.store.lease import claim_rows
from node.store.requeue import requeue_rows

QUEUED, SENT, DEAD, SUPERSEDED = "queued", "sent", "dead", "superseded"
STATES = (QUEUED, SENT, DEAD, SUPERSEDED)
RESULT_KINDS = ("seg", "sr", "sc", "ann")  # the DICOM result objects a job writes (<kind>.dcm)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    destination: str
    path: str
    sop_instance_uid: str
    attempts: int
    priority: int
    first_failed_at: float | None = None
    kind: str = ""
    job_id: int | None = None


@dataclass(frozen=True, slots=True)
class ResultToSend:
    """One object for one destination, as a finished job hands it to the outbox."""

    destination: str
    path: str
    sop_instance_uid: str
    kind: str
    priority: int


def put(db: Connection, job_id: int, item: ResultToSend, now: float,
        after_job: int | None = None) -> None:
    """Queue ``item`` inside the caller's transaction (the job's completion). With
    ``after_job``, it is not ready while that job's results for the same destination are
    still queued or dead (a rejection note follows the results that replace what it
    rejects)."""
    db.execute(
        "INSERT INTO outbox (job_id, destination, path, sop_instance_uid, kind, priority,"
        " state, not_before, created_at, updated_at, after_job) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET"
        " job_id=excluded.job_id, path=excluded.path, priority=excluded.priority,"
        " state=excluded.state, attempts=0, not_before=excluded.not_before, error=NULL,"
        " first_failed_at=NULL, lease_until=NULL, updated_at=excluded.updated_at,"
        " after_job=excluded.after_job",
        (
            job_id,
            item.destination,
            item.path,
            item.sop_instance_uid,
            item.kind,
            item.priority,
            QUEUED,
            now,
            now,
            now,
            after_job,
        ),
    )


class Outbox:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    @property
    def store(self) -> JobStore:
        return self._store

    def put(self, job_id: int, item: ResultToSend, now: float) -> None:
        with self._store.transaction() as db:
            put(db, job_id, item, now)
            self._store.notify(db, "outbox")

    def ready(
        self, now: float, limit: int = 200, lease_s: float = 600.0
    ) -> dict[str, list[OutboxItem]]:
        """Ready items grouped by destination, urgent first, then oldest, each leased to this
        sender for ``lease_s`` (another sender on the store skips them; if this one dies, they
        are ready again when the lease runs out). Looks first without writing (see
        :meth:`node.store.queue.JobQueue.claim`)."""
        with self._store.reading() as db:
            if db.execute("SELECT 1 FROM outbox WHERE state=? AND not_before<=? AND"
                          " (lease_until IS NULL OR lease_until<?) LIMIT 1",
                          (QUEUED, now, now)).fetchone() is None:
                return {}
        with self._store.transaction() as db:
            rows = claim_rows(
                db, self._store.database,
                "SELECT id, destination, path, sop_instance_uid, attempts, priority,"
                " first_failed_at, kind, job_id FROM outbox WHERE state=? AND not_before<=?"
                " AND (lease_until IS NULL OR lease_until<?)"
                " AND (after_job IS NULL OR NOT EXISTS (SELECT 1 FROM outbox AS earlier"
                " WHERE earlier.job_id=outbox.after_job AND earlier.destination=outbox.destination"
                " AND earlier.state IN (?, ?)))"
                " ORDER BY priority DESC, id LIMIT ?", (QUEUED, now, now, QUEUED, DEAD, limit),
                "UPDATE outbox SET lease_until=? WHERE id=?", lambda row: (now + lease_s, row[0]))
        grouped: dict[str, list[OutboxItem]] = {}
        for row in rows:
            grouped.setdefault(row[1], []).append(OutboxItem(*row))
        return grouped

    def _set(
        self,
        item_id: int,
        now: float,
        state: str,
        error: str | None,
        not_before: float | None = None,
    ) -> None:
        failed_since = None if state == SENT else now
        with self._store.transaction() as db:
            db.execute(
                "UPDATE outbox SET state=?, error=?, attempts=attempts+1, lease_until=NULL,"
                " not_before=COALESCE(?, not_before), first_failed_at=COALESCE(first_failed_at, ?),"
                " updated_at=? WHERE id=? AND state=?",
                (state, error, not_before, failed_since, now, item_id, QUEUED),
            )

    def sent(self, item_id: int, now: float) -> None:
        self._set(item_id, now, SENT, None)

    def retry(self, item_id: int, error: str, delay_s: float, now: float) -> None:
        self._set(item_id, now, QUEUED, error, now + delay_s)

    def dead(self, item_id: int, error: str, now: float) -> None:
        self._set(item_id, now, DEAD, error)

    def waiting(self, now: float) -> dict[str, int]:
        """Destinations whose queued items all wait out a backoff (none is ready or being
        sent), each with the item to try first (urgent first, then oldest)."""
        with self._store.reading() as db:
            rows = db.execute(
                "SELECT destination, id, priority FROM outbox o WHERE state=? AND not_before>?"
                " AND NOT EXISTS (SELECT 1 FROM outbox r WHERE r.destination=o.destination"
                " AND r.state=? AND (r.not_before<=? OR r.lease_until>=?))"
                " ORDER BY priority DESC, id", (QUEUED, now, QUEUED, now, now)).fetchall()
        first: dict[str, int] = {}
        for destination, item_id, _ in rows:
            first.setdefault(str(destination), int(item_id))
        return first

    def retry_now(self, item_ids: list[int] | None = None, now: float = 0.0,
                  destination: str | None = None) -> list[int]:
        """Queued items (those named, or every one for ``destination``, or all) made ready
        now, their backoff cut short; dead letters are :meth:`requeue`'s. Returns their ids."""
        clauses = ["state=?"]
        parameters: list[object] = [QUEUED]
        if item_ids is not None:
            if not item_ids:
                return []
            clauses.append(f"id IN ({','.join('?' * len(item_ids))})")
            parameters += item_ids
        if destination is not None:
            clauses.append("destination=?")
            parameters.append(destination)
        where = " AND ".join(clauses)
        with self._store.transaction() as db:
            rows = db.execute(f"SELECT id FROM outbox WHERE {where} AND not_before>?",
                              (*parameters, now)).fetchall()
            found = [int(row[0]) for row in rows]
            db.executemany("UPDATE outbox SET not_before=?, updated_at=? WHERE id=? AND state=?",
                           [(now, now, item_id, QUEUED) for item_id in found])
            if found:
                self._store.notify(db, "outbox")
        return found

    def dead_ids(self, destination: str) -> list[int]:
        with self._store.reading() as db:
            return [int(row[0]) for row in db.execute(
                "SELECT id FROM outbox WHERE state=? AND destination=? ORDER BY id",
                (DEAD, destination)).fetchall()]

    def requeue(self, item_ids: list[int] | None, now: float) -> list[int]:
        """Dead letters (those named, or all with ``None``) queued again, with a new window."""
        if item_ids is not None and not item_ids:
            return []
        with self._store.transaction() as db:
            self._store.notify(db, "outbox")
            return requeue_rows(
                db, "outbox", DEAD, item_ids, "attempts=0, first_failed_at=NULL, lease_until=NULL",
                now,
            )

    def release_leases(self) -> int:
        """Make every leased item ready again: for a sender that knows it is the only one
        (a SQLite store), at start, so what a killed sender held goes now, not when its
        lease runs out. Returns how many were held."""
        with self._store.transaction() as db:
            cursor = db.execute("UPDATE outbox SET lease_until=NULL WHERE state=? AND"
                                " lease_until IS NOT NULL", (QUEUED,))
            return int(cursor.rowcount or 0)

    def source_objects(self, item_ids: list[int]) -> list[tuple[str, str]]:
        """The studies and series whose results these items are (audit ``objects``)."""
        if not item_ids:
            return []
        marks = ",".join("?" * len(item_ids))
        rows = self._store.query(
            "SELECT DISTINCT s.study_uid, s.series_uid FROM outbox o"
            " JOIN jobs j ON j.id=o.job_id"
            " JOIN series s ON s.series_uid=j.series_uid AND s.revision=j.revision"
            f" WHERE o.id IN ({marks})", *item_ids)
        studies = dict.fromkeys(("study", str(r[0])) for r in rows)
        return [*studies, *dict.fromkeys(("series", str(r[1])) for r in rows)]

    def oldest_queued_at(self) -> float | None:
        """When the oldest result still waiting for delivery was queued (None: none waits)."""
        with self._store.reading() as db:
            row = db.execute("SELECT MIN(created_at) FROM outbox WHERE state=?",
                             (QUEUED,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        """Items by state (every state, 0 when none)."""
        with self._store.reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {state: dict(rows).get(state, 0) for state in STATES}

    def by_destination(self) -> dict[str, dict[str, int]]:
        """Counts per destination and state, for ``ainode status``."""
        with self._store.reading() as db:
            rows = db.execute(
                "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"
            ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for destination, state, count in rows:
            counts.setdefault(destination, dict.fromkeys(STATES, 0))[state] = count
        return counts

    def items(self, limit: int = 100, state: str | None = None
              ) -> list[tuple[int, str, str, str, str, int, str | None]]:
        """(id, destination, kind, SOP Instance UID, state, attempts, error), newest first;
        only those in ``state`` when given."""
        where, parameters = ("WHERE state=? ", (state,)) if state is not None else ("", ())
        with self._store.reading() as db:
            return db.execute(
                "SELECT id, destination, kind, sop_instance_uid, state, attempts, error"
                " FROM outbox " + where + "ORDER BY id DESC LIMIT ?",
                (*parameters, limit),
            ).fetchall()

"""The outbox: results waiting for delivery, one row per (destination, SOP instance).

queued -> sent | queued again (backoff) | dead (refused, or attempts exhausted), with the
reason kept. Re-encoding the same result (same deterministic SOP Instance UID) re-queues its
row instead of adding one, so a destination receives each object once per change.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.store.jobs import JobStore

QUEUED, SENT, DEAD = "queued", "sent", "dead"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    destination: str
    path: str
    sop_instance_uid: str
    attempts: int
    priority: int


class Outbox:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        with store.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " job_id INTEGER, destination TEXT NOT NULL, path TEXT NOT NULL,"
                " sop_instance_uid TEXT NOT NULL, kind TEXT NOT NULL, priority INTEGER NOT NULL,"
                " state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                " not_before REAL NOT NULL, error TEXT, created_at REAL NOT NULL,"
                " updated_at REAL NOT NULL, UNIQUE (destination, sop_instance_uid))"
            )

    def put(
        self,
        job_id: int,
        destination: str,
        path: str,
        sop_instance_uid: str,
        kind: str,
        priority: int,
        now: float,
    ) -> None:
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO outbox (job_id, destination, path, sop_instance_uid, kind, priority,"
                " state, not_before, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET"
                " job_id=excluded.job_id, path=excluded.path, priority=excluded.priority,"
                " state=excluded.state, attempts=0, not_before=excluded.not_before, error=NULL,"
                " updated_at=excluded.updated_at",
                (
                    job_id,
                    destination,
                    path,
                    sop_instance_uid,
                    kind,
                    priority,
                    QUEUED,
                    now,
                    now,
                    now,
                ),
            )

    def ready(self, now: float, limit: int = 200) -> dict[str, list[OutboxItem]]:
        """Ready items grouped by destination, urgent first, then oldest."""
        with self._store.reading() as db:
            rows = db.execute(
                "SELECT id, destination, path, sop_instance_uid, attempts, priority FROM outbox"
                " WHERE state=? AND not_before<=? ORDER BY priority DESC, id LIMIT ?",
                (QUEUED, now, limit),
            ).fetchall()
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
        count_attempt: bool = True,
    ) -> None:
        with self._store.transaction() as db:
            db.execute(
                "UPDATE outbox SET state=?, error=?, attempts=attempts+?,"
                " not_before=COALESCE(?, not_before), updated_at=? WHERE id=?",
                (state, error, int(count_attempt), not_before, now, item_id),
            )

    def sent(self, item_id: int, now: float) -> None:
        self._set(item_id, now, SENT, None)

    def retry(self, item_id: int, error: str, delay_s: float, now: float) -> None:
        self._set(item_id, now, QUEUED, error, now + delay_s)

    def dead(self, item_id: int, error: str, now: float) -> None:
        self._set(item_id, now, DEAD, error)

    def by_destination(self) -> dict[str, dict[str, int]]:
        """Counts per destination and state, for ``ainode status``."""
        with self._store.reading() as db:
            rows = db.execute(
                "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"
            ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for destination, state, count in rows:
            counts.setdefault(destination, {QUEUED: 0, SENT: 0, DEAD: 0})[state] = count
        return counts

    def items(self, limit: int = 100) -> list[tuple[str, str, str, str, int, str | None]]:
        with self._store.reading() as db:
            return db.execute(
                "SELECT destination, kind, sop_instance_uid, state, attempts, error FROM outbox"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()

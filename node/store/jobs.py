"""The job store: SQLite (WAL) index of received instances, series revisions and their state.

The spool files are the durable truth (fsynced before any acknowledgement); this index is
committed before the acknowledgement too, and :func:`reconcile` re-indexes any spool file the
index lacks, so even a power loss that rolls back the last transactions loses nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.domain import (
    CompletionReason,
    InstanceRef,
    SeriesAttributes,
    SeriesKey,
    SeriesState,
    SeriesSummary,
    StoreOutcome,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    body_part TEXT NOT NULL,
    series_description TEXT NOT NULL,
    image_type TEXT NOT NULL,
    slice_thickness REAL,
    state TEXT NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    duplicate_count INTEGER NOT NULL DEFAULT 0,
    expected_count INTEGER,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    completed_at REAL,
    completion_reason TEXT,
    route_state TEXT,
    route_detail TEXT,
    PRIMARY KEY (series_uid, revision)
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid, revision);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    lease_until REAL,
    error TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (series_uid, revision, pipeline)
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, priority, not_before);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

# Columns added after the first release: (table, column, declaration). Applied at open.
_ADDED_COLUMNS = (
    ("jobs", "owner", "TEXT"),  # the claim token of the worker holding the lease
    ("jobs", "transient", "INTEGER NOT NULL DEFAULT 0"),  # attempts not counted: outages, stops
    ("jobs", "first_failed_at", "REAL"),  # start of the transient-failure window
    ("jobs", "superseded_by", "INTEGER"),  # the revision that replaced this job's series
    ("outbox", "first_failed_at", "REAL"),  # start of the delivery retry window
)


class JobStore:
    """Thread-safe access to the node's SQLite database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives any process crash; the spool + reconcile cover power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self.add_columns(_ADDED_COLUMNS)

    def add_columns(self, columns: tuple[tuple[str, str, str], ...]) -> None:
        """Add each ``(table, column, declaration)`` a database from an older release lacks."""
        with self.transaction() as db:
            for table, column, declaration in columns:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads, under the store's lock."""
        with self._lock:
            yield self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # also when COMMIT itself fails (disk full, I/O error): SQLite then keeps the
                # transaction open, and every later BEGIN on this connection would fail
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def audit(self, actor: str, action: str, detail: str, now: float) -> None:
        """One line of the audit trail (who did what), e.g. an operator's requeue."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO audit (at, actor, action, detail) VALUES (?,?,?,?)",
                (now, actor, action, detail),
            )

    def audit_lines(self, limit: int = 100) -> list[tuple[float, str, str, str]]:
        with self.reading() as db:
            return db.execute(
                "SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()

    def record_instance(self, ref: InstanceRef, now: float) -> StoreOutcome:
        """Index a spooled instance into the open revision of its series (opening one if needed)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT revision, state FROM series WHERE series_uid=? "
                "ORDER BY revision DESC LIMIT 1",
                (ref.series_instance_uid,),
            ).fetchone()
            if row is None or row[1] == SeriesState.COMPLETE:
                revision = 1 if row is None else row[0] + 1
                if row is not None:
                    _supersede_older_revisions(db, ref.series_instance_uid, revision)
                db.execute(
                    "INSERT INTO series (series_uid, revision, study_uid, modality, calling_ae,"
                    " called_ae, sop_class_uid, body_part, series_description, image_type,"
                    " slice_thickness, state, first_at, last_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        ref.series_instance_uid,
                        revision,
                        ref.study_instance_uid,
                        ref.modality,
                        ref.calling_ae,
                        ref.called_ae,
                        ref.sop_class_uid,
                        ref.body_part,
                        ref.series_description,
                        ref.image_type,
                        ref.slice_thickness_mm,
                        SeriesState.RECEIVING,
                        now,
                        now,
                    ),
                )
            else:
                revision = row[0]
            previous = db.execute(
                "SELECT series_uid, revision FROM instances WHERE sop_uid=?",
                (ref.sop_instance_uid,),
            ).fetchone()
            duplicate = previous is not None
            new_to_revision = previous != (ref.series_instance_uid, revision)
            db.execute(
                "INSERT INTO instances (sop_uid, sop_class_uid, series_uid, revision, study_uid,"
                " transfer_syntax_uid, path, size_bytes, received_at) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(sop_uid) DO UPDATE SET sop_class_uid=excluded.sop_class_uid,"
                " series_uid=excluded.series_uid, revision=excluded.revision,"
                " study_uid=excluded.study_uid, transfer_syntax_uid=excluded.transfer_syntax_uid,"
                " path=excluded.path, size_bytes=excluded.size_bytes,"
                " received_at=excluded.received_at",
                (
                    ref.sop_instance_uid,
                    ref.sop_class_uid,
                    ref.series_instance_uid,
                    revision,
                    ref.study_instance_uid,
                    ref.transfer_syntax_uid,
                    ref.path,
                    ref.size_bytes,
                    now,
                ),
            )
            db.execute(
                "UPDATE series SET last_at=?, instance_count=instance_count+?,"
                " duplicate_count=duplicate_count+?, expected_count=COALESCE(?, expected_count)"
                " WHERE series_uid=? AND revision=?",
                (
                    now,
                    int(new_to_revision),
                    int(duplicate),
                    ref.expected_count,
                    ref.series_instance_uid,
                    revision,
                ),
            )
            count, expected = db.execute(
                "SELECT instance_count, expected_count FROM series"
                " WHERE series_uid=? AND revision=?",
                (ref.series_instance_uid, revision),
            ).fetchone()
        return StoreOutcome(
            series=SeriesKey(ref.series_instance_uid, revision),
            duplicate=duplicate,
            instance_count=count,
            expected_count=expected,
        )

    def complete_series(self, key: SeriesKey, reason: CompletionReason, now: float) -> bool:
        """Mark a receiving revision complete; ``False`` when it already was (idempotent)."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE series SET state=?, completed_at=?, completion_reason=?"
                " WHERE series_uid=? AND revision=? AND state=?",
                (
                    SeriesState.COMPLETE,
                    now,
                    reason,
                    key.series_instance_uid,
                    key.revision,
                    SeriesState.RECEIVING,
                ),
            )
            return cursor.rowcount == 1

    def series_attributes(self, key: SeriesKey) -> SeriesAttributes | None:
        """What routing rules see of a revision (counting its earlier revisions' instances)."""
        with self._lock:
            row = self._db.execute(
                "SELECT called_ae, calling_ae, modality, body_part, sop_class_uid,"
                " series_description, image_type, slice_thickness FROM series"
                " WHERE series_uid=? AND revision=?",
                (key.series_instance_uid, key.revision),
            ).fetchone()
            count = self._db.execute(
                "SELECT COUNT(*) FROM instances WHERE series_uid=? AND revision<=?",
                (key.series_instance_uid, key.revision),
            ).fetchone()[0]
        if row is None:
            return None
        called, calling, modality, body_part, sop_class, description, image_type, thickness = row
        return SeriesAttributes(
            key=key,
            called_ae=called,
            calling_ae=calling,
            modality=modality,
            body_part=body_part,
            sop_class_uid=sop_class,
            series_description=description,
            image_type=image_type,
            instance_count=count,
            slice_thickness_mm=thickness,
        )

    def set_route(self, key: SeriesKey, state: str, detail: str) -> None:
        """Record what routing decided for a revision (``routed`` / ``skipped``)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE series SET route_state=?, route_detail=? WHERE series_uid=? AND revision=?",
                (state, detail, key.series_instance_uid, key.revision),
            )

    def unrouted_complete_series(self) -> list[SeriesKey]:
        """Complete revisions that routing has not decided on (e.g. after a crash)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid, revision FROM series WHERE state=? AND route_state IS NULL"
                " ORDER BY completed_at",
                (SeriesState.COMPLETE,),
            ).fetchall()
        return [SeriesKey(uid, rev) for uid, rev in rows]

    def quiet_series(self, received_before: float) -> list[SeriesKey]:
        """Receiving revisions whose last instance arrived before ``received_before``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid, revision FROM series WHERE state=? AND last_at<?",
                (SeriesState.RECEIVING, received_before),
            ).fetchall()
        return [SeriesKey(uid, rev) for uid, rev in rows]

    def list_series(self, limit: int = 100) -> list[SeriesSummary]:
        """Most recently active revisions first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid, revision, study_uid, modality, calling_ae, state,"
                " instance_count, duplicate_count, expected_count, first_at, last_at,"
                " completed_at, completion_reason, route_state, route_detail FROM series"
                " ORDER BY last_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            SeriesSummary(
                series_instance_uid=r[0],
                revision=r[1],
                study_instance_uid=r[2],
                modality=r[3],
                calling_ae=r[4],
                state=SeriesState(r[5]),
                instance_count=r[6],
                duplicate_count=r[7],
                expected_count=r[8],
                first_received_at=r[9],
                last_received_at=r[10],
                completed_at=r[11],
                completion_reason=r[12],
                route_state=r[13],
                route_detail=r[14],
            )
            for r in rows
        ]

    def instance_paths(self, key: SeriesKey | None = None) -> list[str]:
        """Spool paths of one series (all its revisions up to ``key``), or of every instance."""
        with self._lock:
            if key is None:
                rows = self._db.execute("SELECT path FROM instances").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT path FROM instances WHERE series_uid=? AND revision<=? ORDER BY path",
                    (key.series_instance_uid, key.revision),
                ).fetchall()
        return [r[0] for r in rows]

    def totals(self) -> dict[str, int]:
        """Counts for ``ainode status``: instances, series by state, duplicates."""
        with self._lock:
            instances = self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            by_state = dict(
                self._db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall()
            )
            duplicates = self._db.execute(
                "SELECT COALESCE(SUM(duplicate_count), 0) FROM series"
            ).fetchone()[0]
        return {
            "instances": instances,
            "series_receiving": by_state.get(SeriesState.RECEIVING, 0),
            "series_complete": by_state.get(SeriesState.COMPLETE, 0),
            "duplicates": duplicates,
        }


def _supersede_older_revisions(db: sqlite3.Connection, series_uid: str, revision: int) -> None:
    """A new revision opens: instances may move to it, so jobs of older revisions that have
    not finished would see a truncated series. Those stop (``superseded``), their undelivered
    results are withdrawn, and finished ones are marked as superseded; the new revision is
    routed again when it completes, with every instance of the series."""
    db.execute(
        "UPDATE jobs SET state='superseded', owner=NULL, lease_until=NULL,"
        " error='superseded by revision ' || ? WHERE series_uid=? AND revision<?"
        " AND state IN ('queued', 'running')",
        (revision, series_uid, revision),
    )
    db.execute(
        "UPDATE jobs SET superseded_by=? WHERE series_uid=? AND revision<?"
        " AND superseded_by IS NULL",
        (revision, series_uid, revision),
    )
    db.execute(
        "UPDATE outbox SET state='superseded', error='source series superseded by revision '"
        " || ? WHERE state='queued' AND job_id IN"
        " (SELECT id FROM jobs WHERE series_uid=? AND revision<?)",
        (revision, series_uid, revision),
    )


def requeue_rows(
    db: sqlite3.Connection, table: str, from_state: str, ids: list[int] | None, reset: str,
    now: float,
) -> list[int]:
    """Rows of ``table`` in ``from_state`` (those named, or all with ``None``) set back to
    ``queued`` at ``now`` with the ``reset`` assignments; returns their ids (an operator's
    requeue of failed jobs or dead letters)."""
    if ids is None:
        rows = db.execute(f"SELECT id FROM {table} WHERE state=?", (from_state,)).fetchall()
    else:
        rows = [
            row
            for row_id in ids
            for row in db.execute(
                f"SELECT id FROM {table} WHERE id=? AND state=?", (row_id, from_state)
            ).fetchall()
        ]
    found = [row[0] for row in rows]
    db.executemany(
        f"UPDATE {table} SET state='queued', {reset}, not_before=?, updated_at=? WHERE id=?",
        [(now, now, row_id) for row_id in found],
    )
    return found

"""The job store: the index of received instances, series revisions, jobs and results.

On SQLite (WAL, the embedded default) or PostgreSQL (several nodes on one store); see
:mod:`node.store.database`. Decisions that several receivers could race on (a series' next
revision, its completion) are taken in the database under a per-series lock.

The spool files are the durable truth (fsynced before any acknowledgement); this index is
committed before the acknowledgement too, and :func:`reconcile` re-indexes any spool file the
index lacks, so even a power loss that rolls back the last transactions loses nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from node.domain import (
    AuditEvent,
    CompletionReason,
    InstanceRef,
    SeriesAttributes,
    SeriesKey,
    SeriesState,
    SeriesSummary,
    StoreOutcome,
)
from node.imaging.slide import WSI_SOP_CLASS
from node.store.database import Connection, Database, SQLiteDatabase
from node.store.lease import claim_rows
from node.store.schema import migrate

_AUDIT_COLUMNS = "id, at, actor, action, detail, address, objects, outcome"


@dataclass(frozen=True)
class AuditLine:
    """One stored line of the audit trail (see :meth:`JobStore.audit`)."""

    id: int
    at: float
    actor: str
    action: str
    detail: str
    address: str = ""
    objects: tuple[tuple[str, str], ...] = ()
    outcome: int = 0


def _audit_line(row: Sequence[object]) -> AuditLine:
    objects = json.loads(str(row[6])) if row[6] else []
    return AuditLine(int(cast(int, row[0])), float(cast(float, row[1])), str(row[2]),
                     str(row[3]), str(row[4]), str(row[5]),
                     tuple((str(k), str(u)) for k, u in objects), int(cast(int, row[7])))


class JobStore:
    """The node's job store on SQLite or PostgreSQL (:mod:`node.store.database`)."""

    def __init__(self, database: Database | Path, now: float | None = None) -> None:
        """Open (and migrate) the store: a :class:`Database`, or the path of a SQLite file."""
        self.database = (
            database if isinstance(database, Database) else SQLiteDatabase(database)
        )
        try:
            migrate(self.database, time.time() if now is None else now)
        except BaseException:
            self.database.close()
            raise

    @property
    def dialect(self) -> str:
        return self.database.dialect

    def close(self) -> None:
        self.database.close()

    def reading(self) -> AbstractContextManager[Connection]:
        """A connection, for reads."""
        return cast(AbstractContextManager[Connection], self.database.reading())

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction, committed at exit, rolled back on error."""
        return cast(AbstractContextManager[Connection], self.database.transaction())

    def query(self, sql: str, *parameters: object) -> list[tuple[object, ...]]:
        """Rows of a read-only query (``?`` placeholders on either engine)."""
        with self.reading() as db:
            return [tuple(row) for row in db.execute(sql, parameters).fetchall()]

    def notify(self, db: Connection, channel: str) -> None:
        """Wake other processes waiting for ``channel`` work when ``db`` commits."""
        self.database.notify(db, channel)

    def audit(self, actor: str, action: AuditEvent, detail: str, now: float,
              db: Connection | None = None, *, address: str = "",
              objects: Sequence[tuple[str, str]] = (), outcome: int = 0) -> None:
        """One line of the audit trail (who did what): in ``db``'s transaction when given (so
        it commits with what it records), else in its own. ``address``: the actor's network
        address; ``objects``: (kind, UID) pairs it concerns (``study``, ``series``);
        ``outcome``: 0 success, 4 minor, 8 serious, 12 major failure (PS3.15 A.5.3)."""
        if db is not None:
            db.execute(
                "INSERT INTO audit (at, actor, action, detail, address, objects, outcome)"
                " VALUES (?,?,?,?,?,?,?)",
                (now, actor, action, detail, address,
                 json.dumps([list(o) for o in objects]) if objects else "", outcome))
            return
        with self.transaction() as own:
            self.audit(actor, action, detail, now, own, address=address, objects=objects,
                       outcome=outcome)

    def series_objects(self, series_uid: str, db: Connection | None = None
                       ) -> list[tuple[str, str]]:
        """A series as audit lines name it: its study and itself (``objects``)."""
        sql = "SELECT study_uid FROM series WHERE series_uid=? ORDER BY revision DESC LIMIT 1"
        if db is None:
            rows = self.query(sql, series_uid)
        else:
            rows = db.execute(sql, (series_uid,)).fetchall()
        study = [("study", str(rows[0][0]))] if rows else []
        return [*study, ("series", series_uid)]

    def audit_lines(self, limit: int = 100, since: float = 0.0) -> list[AuditLine]:
        """The newest ``limit`` lines at or after ``since`` (epoch seconds), newest first."""
        with self.reading() as db:
            rows = db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE at >= ? ORDER BY id DESC LIMIT ?",
                (since, limit)).fetchall()
        return [_audit_line(row) for row in rows]

    def claim_audit_lines(self, now: float, limit: int = 100, lease_s: float = 60.0
                          ) -> list[AuditLine]:
        """The oldest lines not yet forwarded (to a syslog collector), leased to the caller
        for ``lease_s``: another forwarder on the store skips them, and if this one dies they
        are claimed again when the lease runs out. The lease is the negated claim time in
        ``forwarded`` (0: waiting, 1: forwarded)."""
        with self.transaction() as db:
            rows = claim_rows(
                db, self.database,
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE forwarded=0 OR"
                " (forwarded<0 AND forwarded>?) ORDER BY id LIMIT ?", (-int(now - lease_s), limit),
                "UPDATE audit SET forwarded=? WHERE id=?", lambda row: (-int(now), row[0]))
        return [_audit_line(row) for row in rows]

    def audit_forwarded(self, ids: Sequence[int], forwarded: bool = True) -> None:
        """Mark claimed lines forwarded, or (``forwarded=False``) waiting again."""
        with self.transaction() as db:
            db.executemany("UPDATE audit SET forwarded=? WHERE id=?",
                           [(1 if forwarded else 0, i) for i in ids])

    def settings_digests(self, node_name: str, digests: dict[str, str]) -> dict[str, str]:
        """Record this node's configuration digests (per section); returns the previous
        digest of each section that changed (an empty string for a new section)."""
        with self.transaction() as db:
            self.database.lock(db, f"settings:{node_name}")
            before = dict(db.execute(
                "SELECT section, digest FROM settings_digests WHERE node_name=?",
                (node_name,)).fetchall())
            changed = {s: before.get(s, "") for s, d in digests.items() if before.get(s) != d}
            changed.update({s: d for s, d in before.items() if s not in digests})
            db.execute("DELETE FROM settings_digests WHERE node_name=?", (node_name,))
            db.executemany(
                "INSERT INTO settings_digests (node_name, section, digest) VALUES (?,?,?)",
                [(node_name, s, d) for s, d in digests.items()])
        return changed

    def record_instance(self, ref: InstanceRef, now: float) -> StoreOutcome:
        """Index a spooled instance into the open revision of its series (opening one if needed)."""
        with self.transaction() as db:
            self.database.lock(db, ref.series_instance_uid)
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
            whole_slide=ref.sop_class_uid == WSI_SOP_CLASS,
        )

    def newest_revision(self, series_uid: str, state: SeriesState) -> int | None:
        """The newest revision of the series in ``state``, if any."""
        with self.reading() as db:
            row = db.execute("SELECT revision FROM series WHERE series_uid=? AND state=?"
                             " ORDER BY revision DESC LIMIT 1",
                             (series_uid, state.value)).fetchone()
        return None if row is None else int(row[0])

    def complete_series(
        self, key: SeriesKey, reason: CompletionReason, now: float,
        received_before: float | None = None,
    ) -> bool:
        """Mark a receiving revision complete; ``False`` when it already was (idempotent), or,
        with ``received_before``, when an instance arrived since (it is not quiet any more)."""
        with self.transaction() as db:
            self.database.lock(db, key.series_instance_uid)
            return self._complete(db, key, reason, now, received_before)

    def _complete(
        self, db: Connection, key: SeriesKey, reason: CompletionReason, now: float,
        received_before: float | None = None,
    ) -> bool:
        """:meth:`complete_series` inside the caller's transaction, which holds the series'
        lock."""
        cursor = db.execute(
            "UPDATE series SET state=?, completed_at=?, completion_reason=?"
            " WHERE series_uid=? AND revision=? AND state=? AND last_at<?",
            (
                SeriesState.COMPLETE,
                now,
                reason,
                key.series_instance_uid,
                key.revision,
                SeriesState.RECEIVING,
                float("inf") if received_before is None else received_before,
            ),
        )
        if cursor.rowcount != 1:
            return False
        db.execute("DELETE FROM series_senders WHERE series_uid=? AND revision=?",
                   (key.series_instance_uid, key.revision))
        self.notify(db, "series")
        return True

    def sender_joined(self, key: SeriesKey, association: str) -> None:
        """``association`` (unique across receivers) sent instances of ``key``."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO series_senders (series_uid, revision, association) VALUES (?,?,?)"
                " ON CONFLICT DO NOTHING",
                (key.series_instance_uid, key.revision, association),
            )

    def sender_left(self, key: SeriesKey, association: str) -> None:
        """``association`` was aborted: it no longer holds the revision open."""
        with self.transaction() as db:
            _forget_sender(db, key, association)

    def sender_released(self, key: SeriesKey, association: str, now: float) -> bool:
        """``association`` ended normally: the revision is complete (``True``) when no other
        association, on this receiver or another, is still sending it. One transaction under
        the series' lock, so no association can join between the count and the completion."""
        with self.transaction() as db:
            self.database.lock(db, key.series_instance_uid)
            _forget_sender(db, key, association)
            others = db.execute(
                "SELECT COUNT(*) FROM series_senders WHERE series_uid=? AND revision=?",
                (key.series_instance_uid, key.revision),
            ).fetchone()[0]
            return not others and self._complete(db, key, CompletionReason.RELEASE, now)

    def series_attributes(self, key: SeriesKey) -> SeriesAttributes | None:
        """What routing rules see of a revision (counting its earlier revisions' instances)."""
        with self.reading() as db:
            row = db.execute(
                "SELECT called_ae, calling_ae, modality, body_part, sop_class_uid,"
                " series_description, image_type, slice_thickness FROM series"
                " WHERE series_uid=? AND revision=?",
                (key.series_instance_uid, key.revision),
            ).fetchone()
            count = db.execute(
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
        with self.reading() as db:
            rows = db.execute(
                "SELECT series_uid, revision FROM series WHERE state=? AND route_state IS NULL"
                " ORDER BY completed_at",
                (SeriesState.COMPLETE,),
            ).fetchall()
        return [SeriesKey(uid, rev) for uid, rev in rows]

    def quiet_series(self, received_before: float) -> list[SeriesKey]:
        """Receiving revisions whose last instance arrived before ``received_before``."""
        with self.reading() as db:
            rows = db.execute(
                "SELECT series_uid, revision FROM series WHERE state=? AND last_at<?",
                (SeriesState.RECEIVING, received_before),
            ).fetchall()
        return [SeriesKey(uid, rev) for uid, rev in rows]

    def list_series(self, limit: int = 100, state: SeriesState | None = None
                    ) -> list[SeriesSummary]:
        """Most recently active revisions first (only those in ``state`` when given)."""
        where, parameters = ("WHERE state=? ", (state.value,)) if state is not None else ("", ())
        with self.reading() as db:
            rows = db.execute(
                "SELECT series_uid, revision, study_uid, modality, calling_ae, state,"
                " instance_count, duplicate_count, expected_count, first_at, last_at,"
                " completed_at, completion_reason, route_state, route_detail FROM series "
                + where + "ORDER BY last_at DESC LIMIT ?",
                (*parameters, limit),
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
        with self.reading() as db:
            if key is None:
                rows = db.execute("SELECT path FROM instances").fetchall()
            else:
                rows = db.execute(
                    "SELECT path FROM instances WHERE series_uid=? AND revision<=? ORDER BY path",
                    (key.series_instance_uid, key.revision),
                ).fetchall()
        return [r[0] for r in rows]

    def totals(self) -> dict[str, int]:
        """Counts for ``ainode status``: instances, series by state, duplicates."""
        with self.reading() as db:
            instances = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            by_state = dict(
                db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall()
            )
            duplicates = db.execute(
                "SELECT COALESCE(SUM(duplicate_count), 0) FROM series"
            ).fetchone()[0]
        return {
            "instances": instances,
            "series_receiving": by_state.get(SeriesState.RECEIVING, 0),
            "series_complete": by_state.get(SeriesState.COMPLETE, 0),
            "duplicates": duplicates,
        }


def _forget_sender(db: Connection, key: SeriesKey, association: str) -> None:
    db.execute(
        "DELETE FROM series_senders WHERE series_uid=? AND revision=? AND association=?",
        (key.series_instance_uid, key.revision, association),
    )


def _supersede_older_revisions(db: Connection, series_uid: str, revision: int) -> None:
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


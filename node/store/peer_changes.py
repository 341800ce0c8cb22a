"""Peers changed live (``peer_changes``): a definition per name, or ``NULL`` for a peer
removed; each change commits with its audit line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.domain import AuditEvent
from node.store.jobs import JobStore


@dataclass(frozen=True)
class PeerChange:
    name: str
    definition: str | None  # JSON; None: removed
    updated_at: float
    updated_by: str


@dataclass(frozen=True)
class ChangeAudit:
    """The audit line a change commits with."""

    event: AuditEvent
    detail: str
    address: str = ""
    objects: Sequence[tuple[str, str]] = ()


class PeerChanges:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def signature(self) -> tuple[object, ...]:
        """Changes when any change does (count, newest, size): a cheap "anything new?"."""
        with self._store.reading() as db:
            return tuple(db.execute(
                "SELECT COUNT(*), MAX(updated_at), SUM(LENGTH(COALESCE(definition, '')))"
                " FROM peer_changes").fetchone())

    def all(self) -> list[PeerChange]:
        with self._store.reading() as db:
            rows = db.execute("SELECT name, definition, updated_at, updated_by"
                              " FROM peer_changes ORDER BY name").fetchall()
        return [PeerChange(str(r[0]), None if r[1] is None else str(r[1]), float(r[2]),
                           str(r[3])) for r in rows]

    def put(self, name: str, definition: str | None, actor: str, now: float,
            audit: ChangeAudit) -> None:
        """Record ``name``'s definition (``None``: removed) with its audit line."""
        with self._store.transaction() as db:
            db.execute("DELETE FROM peer_changes WHERE name=?", (name,))
            db.execute("INSERT INTO peer_changes (name, definition, updated_at, updated_by)"
                       " VALUES (?, ?, ?, ?)", (name, definition, now, actor))
            self._store.audit(actor, audit.event, audit.detail, now, db,
                              address=audit.address, objects=audit.objects)

    def forget(self, name: str, actor: str, now: float, audit: ChangeAudit) -> bool:
        """Drop ``name``'s change; ``False`` when there was none."""
        with self._store.transaction() as db:
            found = db.execute("SELECT COUNT(*) FROM peer_changes WHERE name=?",
                               (name,)).fetchone()[0]
            if not found:
                return False
            db.execute("DELETE FROM peer_changes WHERE name=?", (name,))
            self._store.audit(actor, audit.event, audit.detail, now, db,
                              address=audit.address, objects=audit.objects)
        return True

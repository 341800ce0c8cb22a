"""The de-identification crosswalk (``deid_crosswalk``): pseudonym -> original, per research
entry, kept only for entries that ask for it."""

from __future__ import annotations

from collections.abc import Iterable

from node.store.jobs import JobStore


class Crosswalk:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def record(self, project: str, rows: Iterable[tuple[str, str, str]], now: float) -> None:
        """(kind, pseudonym, original) rows; one already there stays as it is."""
        with self._store.transaction() as db:
            for kind, pseudonym, original in sorted(rows):
                db.execute("INSERT INTO deid_crosswalk (project, kind, pseudonym, original,"
                           " created_at) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                           (project, kind, pseudonym, original, now))

    def lookup(self, project: str, pseudonym: str) -> list[tuple[str, str]]:
        """(kind, original) for a pseudonym of ``project``."""
        return [(str(kind), str(original)) for kind, original in self._store.query(
            "SELECT kind, original FROM deid_crosswalk WHERE project=? AND pseudonym=?"
            " ORDER BY kind", project, pseudonym)]

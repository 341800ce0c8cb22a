"""Reads of the instance and series index for the other stages: a study's files (exports),
what arrived lately (readiness), series by state (metrics)."""

from __future__ import annotations

from node.store.jobs import JobStore


class InstanceIndex:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def of_study(self, study_uid: str) -> list[tuple[str, str]]:
        """(path, series UID) of each instance of the study the node keeps, by path."""
        return [(str(path), str(series)) for path, series in self._store.query(
            "SELECT path, series_uid FROM instances WHERE study_uid=? ORDER BY path",
            study_uid)]

    def received_since(self, since: float) -> int:
        return int(str(self._store.query(
            "SELECT COUNT(*) FROM instances WHERE received_at>=?", since)[0][0]))

    def series_by_state(self) -> dict[str, int]:
        """Series revisions still kept (not purged), by state."""
        return {str(state): int(str(count)) for state, count in self._store.query(
            "SELECT state, COUNT(*) FROM series WHERE purged_at IS NULL GROUP BY state")}

    def reachable(self) -> None:
        """Raises when the store cannot answer."""
        self._store.query("SELECT 1")

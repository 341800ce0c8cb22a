"""An operator's requeue, the same for jobs and results: rows in a final state set back to
``queued`` in one transaction."""

from __future__ import annotations

from node.store.database import Connection


def requeue_rows(
    db: Connection, table: str, from_state: str, ids: list[int] | None, reset: str,
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

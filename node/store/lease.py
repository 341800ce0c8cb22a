"""Claiming rows with a lease, the one way every queue of the job store does it (jobs, results
to send, audit lines to forward): in one transaction, select the rows that are free (on
PostgreSQL skipping those another claimer is taking: ``FOR UPDATE SKIP LOCKED``; SQLite has one
writer at a time) and write each one's lease. A claimer that dies leaves leases that run out,
and the rows are claimed again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from node.store.database import Connection, Database


def claim_rows(db: Connection, database: Database, select: str, parameters: Sequence[object],
               lease: str, lease_of: Callable[[Any], Sequence[object]]) -> list[Any]:
    """The rows ``select`` finds (it ends with its ORDER BY and LIMIT), each leased by the
    statement ``lease`` with ``lease_of(row)`` as its parameters, in ``db``'s transaction."""
    rows = list(db.execute(select + database.skip_locked, tuple(parameters)).fetchall())
    db.executemany(lease, [tuple(lease_of(row)) for row in rows])
    return rows

"""The radiologist's verdict on a result (``verdicts``): accept, reject or modify, with a
reason, who gave it and how (dashboard, API, CLI, or a rejection note from the PACS); the
model and version are kept with it, so acceptance is reported per model version. A result may
be assessed again: its latest verdict counts for the acceptance rate, every verdict for the
totals."""

from __future__ import annotations

import json
from dataclasses import dataclass

from node.store.jobs import JobStore
from node.store.outbox import RESULT_KINDS

VERDICTS = ("accept", "reject", "modify")


@dataclass(frozen=True)
class Verdict:
    job_id: int
    model: str
    version: str
    verdict: str
    reason: str
    actor: str
    source: str
    created_at: float


class Verdicts:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def record(self, job_id: int, verdict: str, reason: str, actor: str, source: str,
               now: float, reference: str = "") -> bool:
        """False when there is no finished job ``job_id`` with results, or when the verdict
        from ``reference`` (e.g. a rejection note's SOP Instance UID) was recorded before."""
        with self._store.transaction() as db:
            row = db.execute("SELECT model, result FROM jobs WHERE id=? AND state='done'",
                             (job_id,)).fetchone()
            if row is None:
                return False
            if reference and db.execute(
                    "SELECT 1 FROM verdicts WHERE job_id=? AND reference=?",
                    (job_id, reference)).fetchone():
                return False
            version = str(json.loads(row[1] or "{}").get("model_version", ""))
            db.execute("INSERT INTO verdicts (job_id, model, version, verdict, reason, actor,"
                       " source, reference, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                       (job_id, row[0], version, verdict, reason, actor, source, reference,
                        now))
            return True

    def jobs_of_results(self, sop_instance_uids: list[str]) -> dict[str, int]:
        """SOP Instance UID -> job, for the result objects the node delivered among these."""
        if not sop_instance_uids:
            return {}
        marks = ",".join("?" * len(sop_instance_uids))
        kinds = ",".join("?" * len(RESULT_KINDS))
        rows = self._store.query(
            f"SELECT sop_instance_uid, job_id FROM outbox WHERE sop_instance_uid IN ({marks})"
            f" AND kind IN ({kinds}) AND state='sent'", *sop_instance_uids, *RESULT_KINDS)
        return {str(uid): int(str(job)) for uid, job in rows}

    def is_own_note(self, sop_instance_uid: str) -> bool:
        return bool(self._store.query(
            "SELECT 1 FROM outbox WHERE sop_instance_uid=? AND kind='kos'", sop_instance_uid))

    def listing(self, limit: int = 200) -> list[Verdict]:
        rows = self._store.query(
            "SELECT job_id, model, version, verdict, reason, actor, source, created_at"
            " FROM verdicts ORDER BY id DESC LIMIT ?", limit)
        return [Verdict(*row) for row in rows]  # type: ignore[arg-type]

    def totals(self) -> dict[tuple[str, str, str], int]:
        """(model, version, verdict) -> verdicts given."""
        rows = self._store.query("SELECT model, version, verdict, COUNT(*) FROM verdicts"
                                 " GROUP BY model, version, verdict")
        return {(str(m), str(v), str(d)): int(str(n)) for m, v, d, n in rows}

    def acceptance(self) -> dict[tuple[str, str], dict[str, float]]:
        """(model, version) -> results assessed, by latest verdict, and the acceptance rate."""
        rows = self._store.query(
            "SELECT model, version, verdict FROM verdicts WHERE id IN"
            " (SELECT MAX(id) FROM verdicts GROUP BY job_id)")
        report: dict[tuple[str, str], dict[str, float]] = {}
        for model, version, verdict in rows:
            entry = report.setdefault((str(model), str(version)),
                                      {"assessed": 0, **{v: 0 for v in VERDICTS}})
            entry["assessed"] += 1
            entry[str(verdict)] += 1
        for entry in report.values():
            entry["acceptance_rate"] = round(entry["accept"] / entry["assessed"], 4)
        return report

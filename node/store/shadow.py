"""Shadow runs' comparisons (``shadow_comparisons``): per series revision and shadow pipeline,
how its result compares with the live pipeline's (JSON, :mod:`node.jobs.shadow`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from node.domain import SeriesKey
from node.store.jobs import JobStore


@dataclass(frozen=True)
class Comparison:
    series_uid: str
    revision: int
    pipeline: str
    live_pipeline: str
    live_job: int
    shadow_job: int
    comparison: dict[str, Any]
    created_at: float


class ShadowComparisons:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def done_results(self, series: SeriesKey, pipelines: list[str]
                     ) -> dict[str, tuple[int, dict[str, Any]]]:
        """pipeline -> (job id, result summary) of the finished jobs of these pipelines on
        ``series``."""
        marks = ",".join("?" * len(pipelines))
        rows = self._store.query(
            f"SELECT pipeline, id, result FROM jobs WHERE series_uid=? AND revision=?"
            f" AND state='done' AND pipeline IN ({marks})",
            series.series_instance_uid, series.revision, *pipelines)
        return {str(p): (int(str(i)), json.loads(str(r or "{}"))) for p, i, r in rows}

    def record(self, series: SeriesKey, pipeline: str, live_pipeline: str, live_job: int,
               shadow_job: int, comparison: dict[str, Any], now: float) -> bool:
        """Keep a comparison once (two workers may finish the pair at the same time)."""
        with self._store.transaction() as db:
            return bool(db.execute(
                "INSERT INTO shadow_comparisons (series_uid, revision, pipeline, live_pipeline,"
                " live_job, shadow_job, comparison, created_at) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT DO NOTHING",
                (series.series_instance_uid, series.revision, pipeline, live_pipeline, live_job,
                 shadow_job, json.dumps(comparison), now)).rowcount)

    def listing(self, pipeline: str | None = None, limit: int = 500) -> list[Comparison]:
        """Comparisons, oldest first (the newest ``limit``)."""
        where, args = ("WHERE pipeline=?", (pipeline,)) if pipeline else ("", ())
        rows = self._store.query(
            "SELECT series_uid, revision, pipeline, live_pipeline, live_job, shadow_job,"
            f" comparison, created_at FROM shadow_comparisons {where}"
            " ORDER BY created_at DESC LIMIT ?", *args, limit)
        return [Comparison(str(s), int(str(r)), str(p), str(lp), int(str(lj)), int(str(sj)),
                           json.loads(str(c)), float(str(t)))
                for s, r, p, lp, lj, sj, c, t in reversed(rows)]

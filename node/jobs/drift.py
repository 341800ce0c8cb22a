"""Drift: whether what a pipeline sees and reports today still looks like what it saw when it
was validated. Per pipeline, from its finished jobs (their summaries):

- per day: studies processed, the share with a finding present, the median of each reported
  measure (a label's volume, a finding's probability) and of the inference seconds;
- per feature, the Population Stability Index of the recent window (``drift.window_days``)
  against the baseline (the pipeline's first ``drift.baseline_days``, or first
  ``drift.baseline_jobs`` jobs): PSI = sum over bins of (recent - baseline) x ln(recent /
  baseline), shares smoothed by 1e-4. Features: the inputs (manufacturer, scanner model, slice
  thickness, pixel spacing, kVp, series description: one bin per value), whether a finding is
  present, each measure and the inference seconds (bins at the baseline's deciles). Reading
  (the usual convention): below 0.1 stable, 0.1-0.25 moderate, from ``drift.psi_warning``
  (0.25) drifted.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from node.domain import JobState
from node.settings import DriftSection, Settings
from node.store.jobs import JobStore
from node.store.queue import JobQueue, JobSummary

log = logging.getLogger(__name__)
CATEGORICAL = ("manufacturer", "model_name", "slice_thickness_mm", "pixel_spacing_mm", "kvp",
               "series_description")
SMOOTHING = 1e-4
MAX_JOBS = 20_000


def psi(baseline: Sequence[Any], recent: Sequence[Any], numeric: bool) -> float:
    """The Population Stability Index of ``recent`` against ``baseline``."""
    if not baseline or not recent:
        return 0.0
    if numeric:
        ordered = sorted(float(v) for v in baseline)
        edges = sorted({ordered[min(len(ordered) - 1, int(q * len(ordered) / 10))]
                        for q in range(1, 10)})

        def bin_of(value: Any) -> Any:
            return sum(float(value) > edge for edge in edges)
    else:
        def bin_of(value: Any) -> Any:
            return "" if value is None else str(value)
    expected, actual = Counter(map(bin_of, baseline)), Counter(map(bin_of, recent))
    total = 0.0
    for key in set(expected) | set(actual):
        e = max(expected[key] / len(baseline), SMOOTHING)
        a = max(actual[key] / len(recent), SMOOTHING)
        total += (a - e) * math.log(a / e)
    return round(total, 4)


def _features(summary: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """feature -> (value, numeric) of one job."""
    features: dict[str, tuple[Any, bool]] = {
        f"input.{name}": (value, False)
        for name, value in (summary.get("inputs_profile") or {}).items() if name in CATEGORICAL}
    labels = summary.get("labels") or {}
    features["output.finding_present"] = (any(v.get("present") for v in labels.values()), False)
    for name, finding in labels.items():
        for measure in ("volume_ml", "probability"):
            if finding.get(measure) is not None:
                features[f"output.{name}.{measure}"] = (float(finding[measure]), True)
    seconds = (summary.get("seconds") or {}).get("infer")
    if seconds is not None:
        features["latency.infer_s"] = (float(seconds), True)
    return features


@dataclass
class PipelineDrift:
    pipeline: str
    baseline_jobs: int
    recent_jobs: int
    psi: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)  # features at or above the warning
    days: list[dict[str, Any]] = field(default_factory=list)  # per day, oldest first


def _day(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d")


def pipeline_drift(pipeline: str, jobs: list[JobSummary], config: DriftSection,
                   now: float) -> PipelineDrift:
    """``jobs``: the pipeline's finished jobs, any order."""
    done = sorted((j for j in jobs if j.result), key=lambda j: (j.updated_at, j.id))
    if config.baseline_jobs is not None:
        baseline = done[:config.baseline_jobs]
    else:
        start = done[0].updated_at if done else now
        baseline = [j for j in done if j.updated_at < start + config.baseline_days * 86400]
    seen = {j.id for j in baseline}
    recent = [j for j in done if j.id not in seen
              and j.updated_at >= now - config.window_days * 86400]
    report = PipelineDrift(pipeline, len(baseline), len(recent))
    if len(recent) >= config.min_jobs and baseline:
        old = [_features(j.result or {}) for j in baseline]
        new = [_features(j.result or {}) for j in recent]
        for name in sorted({n for f in old + new for n in f}):
            numeric = any(f[name][1] for f in old + new if name in f)
            before = [f[name][0] for f in old if name in f]
            after = [f[name][0] for f in new if name in f]
            if before and after:
                report.psi[name] = psi(before, after, numeric)
        report.drifted = [n for n, v in report.psi.items() if v >= config.psi_warning]
    by_day: dict[str, list[dict[str, Any]]] = {}
    for job in done:
        by_day.setdefault(_day(job.updated_at), []).append(job.result or {})
    for day, results in sorted(by_day.items()):
        features = [_features(r) for r in results]
        entry: dict[str, Any] = {
            "day": day, "studies": len(results),
            "present_rate": round(sum(bool(f["output.finding_present"][0]) for f in features)
                                  / len(features), 4)}
        numeric_names = sorted({n for f in features for n, (_, num) in f.items() if num})
        for name in numeric_names:
            entry[f"median {name}"] = round(statistics.median(
                f[name][0] for f in features if name in f), 4)
        report.days.append(entry)
    return report


def drift(settings: Settings, store: JobStore, now: float,
          pipeline: str | None = None) -> list[PipelineDrift]:
    """Drift of every configured pipeline (or one)."""
    names = [p.name for p in settings.pipelines if pipeline in (None, p.name)]
    queue = JobQueue(store)
    return [pipeline_drift(name, queue.jobs(MAX_JOBS, JobState.DONE, name), settings.drift, now)
            for name in names]


_polled: dict[int, tuple[float, list[PipelineDrift]]] = {}  # store -> (when, reports)


def drift_polled(settings: Settings, store: JobStore, now: float) -> list[PipelineDrift]:
    """:func:`drift` of every pipeline for what is polled (``/readyz``, ``/metrics``): computed
    at most every ``drift.check_interval_s``, not on each probe and scrape (it reads up to
    ``MAX_JOBS`` job summaries per pipeline)."""
    cached = _polled.get(id(store))
    if cached is None or now - cached[0] >= settings.drift.check_interval_s:
        cached = (now, drift(settings, store, now))
        _polled[id(store)] = cached
    return cached[1]


class DriftWatch:
    """Logs a warning when a pipeline's drifted features change (checked after its jobs, at
    most every ``drift.check_interval_s`` per pipeline)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._checked: dict[str, float] = {}
        self._drifted: dict[str, list[str]] = {}

    def after_job(self, settings: Settings, pipeline: str, now: float) -> list[str]:
        """The pipeline's drifted features when checked now, else []."""
        if now - self._checked.get(pipeline, -math.inf) < settings.drift.check_interval_s:
            return []
        self._checked[pipeline] = now
        reports = drift(settings, self._store, now, pipeline)
        if not reports:  # no longer configured
            return []
        report = reports[0]
        if report.drifted and report.drifted != self._drifted.get(pipeline):
            log.warning("pipeline %s has drifted from its baseline (%d jobs): %s", pipeline,
                        report.baseline_jobs, ", ".join(
                            f"{name} PSI {report.psi[name]:.2f}" for name in report.drifted))
        self._drifted[pipeline] = report.drifted
        return report.drifted

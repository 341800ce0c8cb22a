"""``/metrics``: every role process's counters and histograms (:mod:`node.runtime.metrics`; summed
from ``PROMETHEUS_MULTIPROC_DIR`` under the supervisor) plus what the job store and the disk
say at scrape time (:class:`StoreCollector`)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector

from node import __version__
from node.domain import JobState
from node.jobs.drift import drift_polled
from node.jobs.shadow import summarise
from node.operations import readiness
from node.store import outbox
from node.store.index import InstanceIndex
from node.store.outbox import Outbox
from node.store.queue import JobQueue
from node.store.shadow import ShadowComparisons
from node.store.verdicts import Verdicts
from node.web.auth import require_token
from node.web.context import WebContext

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_token)])
PLAIN_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector:
    """Gauges read from the job store (shared by every role and node) and the disk."""

    def __init__(self, context: WebContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Metric]:
        store = self._context.store
        jobs = GaugeMetricFamily("ainode_jobs", "Jobs by state", labels=["state"])
        counts = JobQueue(store).counts()
        for job_state in JobState:
            jobs.add_metric([job_state.value], counts.get(job_state.value, 0))
        yield jobs
        series = GaugeMetricFamily("ainode_series", "Series by state", labels=["state"])
        for name, count in InstanceIndex(store).series_by_state().items():
            series.add_metric([name], count)
        yield series
        results = GaugeMetricFamily("ainode_outbox", "Result objects in the outbox by state",
                                    labels=["state"])
        by_state = Outbox(store).counts()
        for name in outbox.STATES:
            results.add_metric([name], by_state.get(name, 0))
        yield results
        depth = GaugeMetricFamily("ainode_queue_depth", "Work waiting: jobs queued or running,"
                                  " results queued for delivery", labels=["queue"])
        depth.add_metric(["jobs"], counts.get(JobState.QUEUED.value, 0)
                         + counts.get(JobState.RUNNING.value, 0))
        depth.add_metric(["outbox"], by_state.get(outbox.QUEUED, 0))
        yield depth
        settings = self._context.settings
        yield GaugeMetricFamily("ainode_disk_free_bytes", "Free bytes under node.data_dir",
                                value=readiness.free_bytes(settings))
        yield GaugeMetricFamily(
            "ainode_disk_floor_bytes", "node.min_free_disk_mb: below it instances are refused",
            value=settings.node.min_free_disk_mb * 1024 * 1024)
        oldest = Outbox(store).oldest_queued_at()
        yield GaugeMetricFamily(
            "ainode_outbox_oldest_queued_age_seconds", "How long the oldest result still "
            "waiting for delivery has waited (0 when none waits)",
            value=max(time.time() - oldest, 0.0) if oldest is not None else 0.0)
        yield GaugeMetricFamily(
            "ainode_backend_ready", "1 when the inference backend can run jobs (Triton live "
            "and its pipelines' models ready; always 1 for the embedded backend)",
            value=0.0 if readiness.check_triton(settings) else 1.0)
        yield self._shadow()
        yield from self._drift()
        assessed = CounterMetricFamily(
            "ainode_results_assessed", "Verdicts given on results, by model, version and "
            "verdict (accept, reject, modify)", labels=["model", "version", "verdict"])
        verdicts = Verdicts(store)
        for (model, version, verdict), count in verdicts.totals().items():
            assessed.add_metric([model, version, verdict], count)
        yield assessed
        rate = GaugeMetricFamily(
            "ainode_results_acceptance_rate", "Share of a model version's assessed results "
            "whose latest verdict is accept", labels=["model", "version"])
        for (model, version), values in verdicts.acceptance().items():
            rate.add_metric([model, version], values["acceptance_rate"])
        yield rate
        info = InfoMetricFamily("ainode_build", "The running ainode")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info


    def _drift(self) -> Iterator[Metric]:
        """Per pipeline and feature, the PSI of the recent window against the baseline."""
        index = GaugeMetricFamily(
            "ainode_drift_psi", "Population Stability Index of a pipeline's recent inputs and "
            "outputs against its baseline, per feature", labels=["pipeline", "feature"])
        drifted = GaugeMetricFamily("ainode_drift_features", "Features of a pipeline at or "
                                    "above drift.psi_warning", labels=["pipeline"])
        for report in drift_polled(self._context.settings, self._context.store, time.time()):
            for feature, value in report.psi.items():
                index.add_metric([report.pipeline, feature], value)
            drifted.add_metric([report.pipeline], len(report.drifted))
        yield index
        yield drifted

    def _shadow(self) -> Metric:
        """Per shadow pipeline and label: the median Dice with the live result, or for a
        finding (no mask) the share of series where both agreed (the last 500 series)."""
        agreement = GaugeMetricFamily(
            "ainode_shadow_agreement", "Shadow vs live: median Dice per label, or agreement "
            "rate per finding", labels=["pipeline", "label"])
        summary = summarise(ShadowComparisons(self._context.store).listing(None, 500))
        for pipeline, values in summary.items():
            for label, rate in values["agreement_rate"].items():
                agreement.add_metric([pipeline, label],
                                     values["median_dice"].get(label, rate))
        return agreement


class _ThisProcess:
    """The default registry (this process's metrics) when not in multiprocess mode."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry_for(context: WebContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(StoreCollector(context))
    return registry


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition format 0.0.4."""
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=PLAIN_TEXT)


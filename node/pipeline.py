"""The one orchestrator: route completed series to jobs; run a job: volume -> model -> result.

Every step ends in a durable state change in the job store: a job is ``done`` with its result
summary, ``queued`` again with a retry time (backend unreachable, unexpected error), or
``failed`` with a reason a retry cannot fix (unknown model, a series that is not a volume).
Results (label map + summary) are written under ``data_dir/results`` before the job is done;
the job's completion and its outbox entries are one transaction, taken only while the worker
still holds the job's lease (renewed by a heartbeat), so a job is never delivered twice.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from node.domain import Job, SeriesKey
from node.encode.common import Provenance, count_labels
from node.encode.outputs import (
    encode_findings_report,
    encode_heatmap_outputs,
    encode_outputs,
    is_urgent,
)
from node.encode.seg import EncodeError
from node.imaging.volume import Volume, VolumeError, load_series
from node.infer.backend import Backend, BackendUnavailable, InferenceFailed
from node.infer.repository import ModelConfigError, ModelNotFound, ModelSpec, load_model_spec
from node.loops import Loop
from node.route import route
from node.segments import effective_segments
from node.settings import Pipeline, Settings
from node.store import outbox
from node.store.durable import write_atomically
from node.store.jobs import JobStore
from node.store.outbox import ResultToSend
from node.store.queue import JobQueue, LeaseLost
from node.store.spool import path_component

log = logging.getLogger(__name__)

PERMANENT_ERRORS = (ModelNotFound, ModelConfigError, VolumeError, InferenceFailed, EncodeError)
ROUTE_ATTEMPTS = 5


@dataclass(frozen=True)
class JobResult:
    labels: NDArray[np.uint8]
    volume: Volume
    summary: dict[str, Any]
    deliveries: list[ResultToSend] = field(default_factory=list)


def result_dir(data_dir: Path, key: SeriesKey, pipeline: str) -> Path:
    """Where a job's files go. The series UID comes from received data: it is used only as a
    safe path component (a hash when it is not a well-formed UID), never as given."""
    return (
        data_dir / "results" / path_component(key.series_instance_uid) / str(key.revision)
        / path_component(pipeline)
    )


def _save_dataset(dataset: Dataset, handle: BinaryIO) -> None:
    dataset.save_as(handle, enforce_file_format=True)


def _finding(voxels: int, volume: Volume, min_ml: float) -> dict[str, Any]:
    """What was found of one label: its size (ml; for a radiograph mm², when the pixel spacing
    is known, and pixels) and whether it counts as present."""
    if volume.projection:
        _, row_mm, col_mm = volume.spacing
        area = round(voxels * row_mm * col_mm, 1) if volume.pixel_spacing_known else None
        return {"pixels": voxels, "area_mm2": area, "present": voxels > 0}
    volume_ml = round(voxels * volume.voxel_volume_ml, 3)
    return {"voxels": voxels, "volume_ml": volume_ml, "present": volume_ml >= max(min_ml, 1e-9)}


def _heat_finding(probability: NDArray[np.float32], volume: Volume,
                  threshold: float) -> dict[str, Any]:
    """A heatmap's finding: its highest probability, present when that reaches the model's
    threshold, and the size of the region where it does."""
    peak = float(probability.max())
    found = _finding(int(np.count_nonzero(probability >= threshold)), volume, 0.0)
    found.update(probability=round(peak, 4), present=peak >= threshold)
    return found


class Orchestrator:
    """Routes completed series and runs jobs on a backend, on ``workers`` threads."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: Backend,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._queue = JobQueue(store)
        self._on_outbox = on_outbox
        self._backend = backend
        self._clock = clock
        self._wake = threading.Event()
        self._held: dict[int, Job] = {}
        self._held_lock = threading.Lock()
        self._route_failures: dict[SeriesKey, tuple[int, float]] = {}
        lease_s = settings.inference.lease_s
        self._loops = [
            Loop(f"worker-{index}", self.run_next, 1.0, prepare=self._warm_up, wake=self._wake)
            for index in range(settings.inference.workers)
        ]
        self._heartbeat = Loop("job-heartbeat", self._renew_leases, lease_s / 3)

    # -- routing ---------------------------------------------------------------------------
    def series_complete(self, key: SeriesKey) -> int:
        """Queue a job per matching pipeline (or record the series as skipped)."""
        attributes = self._store.series_attributes(key)
        if attributes is None:
            return 0
        matched = route(attributes, self._settings.pipelines)
        if not matched:
            self._store.set_route(key, "skipped", "no pipeline matched")
            log.info(
                "series %s rev %d: no pipeline matched (skipped)",
                key.series_instance_uid,
                key.revision,
            )
            return 0
        queued = sum(
            self._queue.enqueue(key, [(p.name, p.model)], self._clock(), priority=p.priority)
            for p in matched
        )
        self._store.set_route(key, "routed", ", ".join(p.name for p in matched))
        log.info(
            "series %s rev %d: queued %s",
            key.series_instance_uid,
            key.revision,
            ", ".join(p.name for p in matched),
        )
        self._wake.set()
        return queued

    def route_pending(self) -> int:
        """Route complete revisions not routed yet: completed just now, left by a crash, or
        whose routing failed (retried with backoff; after ``ROUTE_ATTEMPTS`` failures the
        series is marked ``failed`` with the reason). Returns how many were routed."""
        routed = 0
        now = self._clock()
        for key in self._store.unrouted_complete_series():
            failures, not_before = self._route_failures.get(key, (0, 0.0))
            if now < not_before:
                continue
            try:
                self.series_complete(key)
            except Exception as exc:
                failures += 1
                reason = f"{exc.__class__.__name__}: {exc}"[:200]
                if failures >= ROUTE_ATTEMPTS:
                    log.error("series %s rev %d: routing failed %d times, giving up: %s",
                              key.series_instance_uid, key.revision, failures, reason)
                    self._store.set_route(key, "failed", reason)
                    self._route_failures.pop(key, None)
                    continue
                delay = self._settings.inference.retry_policy.delay(failures)
                log.exception("series %s rev %d: routing failed; retrying in %.0f s",
                              key.series_instance_uid, key.revision, delay)
                self._route_failures[key] = (failures, now + delay)
                continue
            self._route_failures.pop(key, None)
            routed += 1
        return routed

    # -- jobs ------------------------------------------------------------------------------
    def run_next(self) -> Job | None:
        """Claim and run one ready job; ``None`` when there is none."""
        inference = self._settings.inference
        job = self._queue.claim(self._clock(), inference.lease_s, inference.job_attempts)
        if job is None:
            return None
        with self._held_lock:
            self._held[job.id] = job
        try:
            self._run(job)
        except LeaseLost:
            log.warning("job %d (%s): no longer ours (superseded, or its lease was taken over);"
                        " its result is discarded", job.id, job.pipeline)
        finally:
            with self._held_lock:
                self._held.pop(job.id, None)
        return job

    def _run(self, job: Job) -> None:
        try:
            result = self.execute(job)
        except PERMANENT_ERRORS as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            log.error("job %d (%s) failed: %s", job.id, job.pipeline, reason)
            self._queue.fail(job, reason, self._clock())
        except LeaseLost:
            raise
        except Exception as exc:  # retried: backend down, disk, anything transient
            self._retry_or_fail(job, exc)
        else:
            now = self._clock()

            def queue_deliveries(db: sqlite3.Connection) -> None:
                for item in result.deliveries:
                    outbox.put(db, job.id, item, now)

            self._queue.complete(job, result.summary, now, also=queue_deliveries)
            log.info("job %d (%s on %s) done", job.id, job.pipeline, job.model)
            if result.deliveries and self._on_outbox is not None:
                self._on_outbox()

    def _retry_or_fail(self, job: Job, exc: Exception) -> None:
        inference = self._settings.inference
        policy = inference.retry_policy
        reason = f"{exc.__class__.__name__}: {exc}"[:300]
        now = self._clock()
        if isinstance(exc, BackendUnavailable):  # an outage: retried over the window
            if policy.exhausted(job.first_failed_at, now):
                log.error("job %d: backend unavailable for %.0f s, giving up: %s",
                          job.id, policy.window_s, reason)
                self._queue.fail(job, f"backend unavailable for {policy.window_s:.0f} s: "
                                 f"{reason}", now)
                return
            delay = policy.delay(job.transient + 1)
            log.warning("job %d: %s; retrying in %.0f s", job.id, reason, delay)
            self._queue.retry(job, reason, delay, now, counted=False)
            return
        if job.attempts >= inference.job_attempts:
            log.error("job %d gave up after %d attempts: %s", job.id, job.attempts, reason)
            self._queue.fail(job, f"gave up after {job.attempts} attempts: {reason}", now)
            return
        delay = policy.delay(job.attempts)
        log.exception("job %d attempt %d failed; retrying in %.0f s", job.id, job.attempts, delay)
        self._queue.retry(job, reason, delay, now)

    def execute(self, job: Job) -> JobResult:
        # torch + MONAI take seconds to import: loaded by the first job, not at start-up,
        # so the DICOM listener is up at once
        from node.infer.runner import StageTimes, run_classifier, run_heatmap, run_model

        times = StageTimes()
        started = time.perf_counter()
        spec = load_model_spec(self._settings.inference.model_repository, job.model)
        self._backend.check(spec)
        paths = self._store.instance_paths(job.series)
        volume = load_series(paths)
        times.add("load", started)
        summary: dict[str, Any] = {
            "model": spec.name,
            "model_version": spec.version,
            "backend": self._backend.name,
        }
        target = result_dir(self._settings.node.data_dir, job.series, job.pipeline)
        target.mkdir(parents=True, exist_ok=True)
        maps: NDArray[np.float32] | None = None
        if spec.is_classifier:
            probabilities = run_classifier(volume, spec, self._backend, times)
            labels = np.zeros((0,), dtype=np.uint8)  # a classifier draws nothing
            summary["labels"] = {
                name: {"probability": p, "present": p >= spec.threshold}
                for name, p in probabilities.items()
            }
        elif spec.is_heatmap:
            maps = run_heatmap(volume, spec, self._backend, times)
            labels = np.zeros((0,), dtype=np.uint8)  # the maps are the result
            summary["shape"] = list(maps.shape)
            summary["labels"] = {name: _heat_finding(maps[index], volume, spec.threshold)
                                 for index, name in enumerate(spec.labels)}
            stored = np.round(maps * 255).astype(np.uint8)  # as the FRACTIONAL SEG stores them
            write_atomically(target / "heatmap.npy", lambda handle: np.save(handle, stored))
        else:
            labels = run_model(volume, spec, self._backend, times)
            counts = count_labels(labels, max(len(spec.labels), 1))
            summary["shape"] = list(labels.shape)
            summary["labels"] = {
                name: _finding(int(counts[value]), volume, spec.min_finding_ml)
                for value, name in enumerate(spec.labels)
                if value > 0
            }
            write_atomically(target / "labels.npy", lambda handle: np.save(handle, labels))
        summary["seconds"] = {k: round(v, 3) for k, v in times.seconds.items()}
        write_atomically(
            target / "slices.json",
            lambda handle: handle.write(
                json.dumps([[s.sop_instance_uid, s.frame_number] for s in volume.slices]).encode()
            ),
        )
        write_atomically(
            target / "summary.json",
            lambda handle: handle.write(json.dumps(summary, indent=1).encode()),
        )
        deliveries = self._encode(job, volume, labels, spec, summary, target, maps)
        summary["result_dir"] = str(target)
        return JobResult(labels, volume, summary, deliveries)

    def _encode(
        self,
        job: Job,
        volume: Volume,
        labels: NDArray[np.uint8],
        spec: ModelSpec,
        summary: dict[str, Any],
        target: Path,
        maps: NDArray[np.float32] | None = None,
    ) -> list[ResultToSend]:
        """SEG / SR / SC as the pipeline asks, written durably; what to queue per destination
        (queued with the job's completion). A classifier gives an SR of its findings, a heatmap
        model a FRACTIONAL SEG, the SR and SC; a job that found nothing gives a rule-out SR
        when the pipeline reports negatives."""
        pipeline = self._pipeline(job.pipeline)
        urgent = is_urgent(pipeline, summary["labels"], spec.threshold)
        summary["urgent"] = urgent
        found = any(label["present"] for label in summary["labels"].values())
        report_negative = (spec.labels_are_findings if pipeline.report_negative is None
                           else pipeline.report_negative)
        summary["outputs"] = {}
        if not pipeline.outputs or (not found and not (report_negative
                                                       and "sr" in pipeline.outputs)):
            return []
        provenance = Provenance(
            job.model,
            spec.version,
            volume.series_instance_uid,
            tuple(s.sop_instance_uid for s in volume.slices),
            self._settings.node.ae_title,
        )
        started = time.perf_counter()
        segments = effective_segments(spec, pipeline)
        if spec.is_classifier or not found:
            summary["negative"] = not found
            objects = encode_findings_report(volume, summary["labels"], segments, provenance,
                                             urgent)
        elif maps is not None:
            objects = encode_heatmap_outputs(volume, maps, summary["labels"], pipeline, segments,
                                             provenance, urgent, spec.threshold)
        else:
            objects = encode_outputs(
                volume, labels, spec.labels, summary["labels"], pipeline, segments, provenance,
                urgent,
            )
        destinations = list(pipeline.destinations)
        if pipeline.reply_to_sender:
            attributes = self._store.series_attributes(job.series)
            sender = self._settings.peer_by_ae(attributes.calling_ae) if attributes else None
            if sender is not None and sender.name not in destinations:
                destinations.append(sender.name)
        summary["seconds"]["encode"] = round(time.perf_counter() - started, 3)
        deliveries: list[ResultToSend] = []
        for kind, dataset in objects.items():
            path = target / f"{kind}.dcm"
            write_atomically(path, functools.partial(_save_dataset, dataset))
            summary["outputs"][kind] = str(dataset.SOPInstanceUID)
            for destination in destinations:
                wanted = self._settings.peer(destination).results
                if wanted is not None and kind not in wanted:
                    continue
                deliveries.append(ResultToSend(
                    destination, str(path), str(dataset.SOPInstanceUID), kind, 10 if urgent else 0
                ))
        return deliveries

    def _pipeline(self, name: str) -> Pipeline:
        for pipeline in self._settings.pipelines:
            if pipeline.name == name:
                return pipeline
        raise ModelConfigError(f"pipeline {name!r} is no longer configured")

    # -- threads ---------------------------------------------------------------------------
    def check_models(self) -> dict[str, str]:
        """Each configured model: ``ready`` or why not. Logged at start; jobs retry or fail
        by themselves, so a backend that is still starting does not stop the node."""
        states: dict[str, str] = {}
        for name in sorted({p.model for p in self._settings.pipelines}):
            try:
                self._backend.check(
                    load_model_spec(self._settings.inference.model_repository, name)
                )
                states[name] = "ready"
            except (ModelNotFound, ModelConfigError, BackendUnavailable) as exc:
                states[name] = str(exc)
                log.error(
                    "model %s is not ready on the %s backend: %s", name, self._backend.name, exc
                )
        return states

    def start(self) -> None:
        """Jobs left running by a previous process are queued again (one node per job store),
        models are checked, leftover series routed, and the workers started."""
        reset = self._queue.reset_running(self._clock())
        if reset:
            log.warning("%d job(s) were running when the node stopped: queued again", reset)
        self.check_models()
        self.route_pending()
        for loop in self._loops:
            loop.start()
        self._heartbeat.start()

    def _warm_up(self) -> None:
        """Load torch + MONAI in the background: the first series should not wait for them
        (a node without pipelines never loads them: ~300 MB less)."""
        if self._settings.pipelines:
            import node.infer.runner  # noqa: F401

    def _renew_leases(self) -> bool:
        with self._held_lock:
            held = list(self._held.values())
        if held:
            for job in self._queue.heartbeat(held, self._clock(), self._settings.inference.lease_s):
                log.warning("job %d: lease lost (superseded or taken over)", job.id)
        return False

    def ensure_running(self) -> None:
        """Restart any worker (or heartbeat) thread that died."""
        for loop in (*self._loops, self._heartbeat):
            loop.ensure_running()

    def stop(self, grace_s: float = 10) -> None:
        """Stop the workers; jobs still running after ``grace_s`` are handed back (queued
        again at once, the attempt not counted) so a restart resumes them."""
        deadline = time.monotonic() + grace_s
        for loop in self._loops:
            loop.stop(timeout_s=max(0.0, deadline - time.monotonic()))
        with self._held_lock:
            held = list(self._held.values())
            self._held.clear()
        if held:
            released = self._queue.release_held(held, self._clock())
            log.warning("stopping: %d running job(s) handed back", released)
        self._heartbeat.stop(timeout_s=5)
        if not any(loop.alive for loop in self._loops):
            self._backend.close()

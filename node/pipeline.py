"""The one orchestrator: route completed series to jobs; run a job: volume -> model -> result.

Every step ends in a durable state change in the job store: a job is ``done`` with its result
summary, ``queued`` again with a retry time (backend unreachable, unexpected error), or
``failed`` with a reason a retry cannot fix (unknown model, a series that is not a volume).
Results (label map + summary) are written under ``data_dir/results`` before the job is done.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from node.domain import Job, SeriesKey
from node.encode.common import Provenance, count_labels
from node.encode.outputs import encode_outputs, is_urgent
from node.encode.seg import EncodeError
from node.imaging.volume import Volume, VolumeError, load_series
from node.infer.backend import Backend, BackendUnavailable, InferenceFailed
from node.infer.repository import ModelConfigError, ModelNotFound, ModelSpec, load_model_spec
from node.route import route
from node.settings import Pipeline, Settings
from node.store.jobs import JobStore
from node.store.outbox import Outbox
from node.store.queue import JobQueue

log = logging.getLogger(__name__)

PERMANENT_ERRORS = (ModelNotFound, ModelConfigError, VolumeError, InferenceFailed, EncodeError)
LEASE_SECONDS = 1800.0


@dataclass(frozen=True)
class JobResult:
    labels: NDArray[np.uint8]
    volume: Volume
    summary: dict[str, Any]


def result_dir(data_dir: Path, key: SeriesKey, pipeline: str) -> Path:
    return data_dir / "results" / key.series_instance_uid / str(key.revision) / pipeline


def _save_dataset(dataset: Dataset, handle: Any) -> None:
    dataset.save_as(handle, enforce_file_format=True)


def _write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fdatasync(handle.fileno())
    os.replace(tmp, path)


def _finding(voxels: int, voxel_ml: float, min_ml: float) -> dict[str, Any]:
    volume_ml = round(voxels * voxel_ml, 3)
    return {"voxels": voxels, "volume_ml": volume_ml, "present": volume_ml >= max(min_ml, 1e-9)}


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
        self._outbox = Outbox(store)
        self._on_outbox = on_outbox
        self._backend = backend
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

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

    def route_pending(self) -> None:
        """Route complete revisions that a crash left unrouted."""
        for key in self._store.unrouted_complete_series():
            self.series_complete(key)

    # -- jobs ------------------------------------------------------------------------------
    def run_next(self) -> Job | None:
        """Claim and run one ready job; ``None`` when there is none."""
        job = self._queue.claim(self._clock(), LEASE_SECONDS)
        if job is None:
            return None
        try:
            result = self.execute(job)
        except PERMANENT_ERRORS as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            log.error("job %d (%s) failed: %s", job.id, job.pipeline, reason)
            self._queue.fail(job.id, reason, self._clock())
        except Exception as exc:  # retried: backend down, disk, anything transient
            self._retry_or_fail(job, exc)
        else:
            self._queue.complete(job.id, result.summary, self._clock())
            log.info("job %d (%s on %s) done", job.id, job.pipeline, job.model)
        return job

    def _retry_or_fail(self, job: Job, exc: Exception) -> None:
        inference = self._settings.inference
        reason = f"{exc.__class__.__name__}: {exc}"[:300]
        if job.attempts >= inference.job_attempts:
            log.error("job %d gave up after %d attempts: %s", job.id, job.attempts, reason)
            self._queue.fail(
                job.id, f"gave up after {job.attempts} attempts: {reason}", self._clock()
            )
            return
        delay = inference.job_retry_s * 2 ** (job.attempts - 1)
        if not isinstance(exc, BackendUnavailable):
            log.exception(
                "job %d attempt %d failed; retrying in %.0f s", job.id, job.attempts, delay
            )
        else:
            log.warning("job %d: %s; retrying in %.0f s", job.id, reason, delay)
        self._queue.retry(job.id, reason, delay, self._clock())

    def execute(self, job: Job) -> JobResult:
        # torch + MONAI take seconds to import: loaded by the first job, not at start-up,
        # so the DICOM listener is up at once
        from node.infer.runner import StageTimes, run_model

        times = StageTimes()
        started = time.perf_counter()
        spec = load_model_spec(self._settings.inference.model_repository, job.model)
        self._backend.check(spec)
        paths = self._store.instance_paths(job.series)
        volume = load_series(paths)
        times.add("load", started)
        labels = run_model(volume, spec, self._backend, times)
        counts = count_labels(labels, max(len(spec.labels), 1))
        summary: dict[str, Any] = {
            "model": spec.name,
            "model_version": spec.version,
            "backend": self._backend.name,
            "shape": list(labels.shape),
            "labels": {
                name: _finding(int(counts[value]), volume.voxel_volume_ml, spec.min_finding_ml)
                for value, name in enumerate(spec.labels)
                if value > 0
            },
            "seconds": {k: round(v, 3) for k, v in times.seconds.items()},
        }
        target = result_dir(self._settings.node.data_dir, job.series, job.pipeline)
        target.mkdir(parents=True, exist_ok=True)
        _write_atomically(target / "labels.npy", lambda handle: np.save(handle, labels))
        _write_atomically(
            target / "slices.json",
            lambda handle: handle.write(
                json.dumps([[s.sop_instance_uid, s.frame_number] for s in volume.slices]).encode()
            ),
        )
        _write_atomically(
            target / "summary.json",
            lambda handle: handle.write(json.dumps(summary, indent=1).encode()),
        )
        self._encode_and_queue(job, volume, labels, spec.labels, summary, target, spec.version)
        summary["result_dir"] = str(target)
        return JobResult(labels, volume, summary)

    def _encode_and_queue(
        self,
        job: Job,
        volume: Volume,
        labels: NDArray[np.uint8],
        label_names: tuple[str, ...],
        summary: dict[str, Any],
        target: Path,
        model_version: str,
    ) -> None:
        """SEG / SR / SC as the pipeline asks, written durably, then queued per destination."""
        pipeline = self._pipeline(job.pipeline)
        urgent = is_urgent(pipeline, summary["labels"])
        summary["urgent"] = urgent
        if not pipeline.outputs or not any(
            label["present"] for label in summary["labels"].values()
        ):
            summary["outputs"] = {}
            return
        provenance = Provenance(
            job.model,
            model_version,
            volume.series_instance_uid,
            tuple(s.sop_instance_uid for s in volume.slices),
            self._settings.node.ae_title,
        )
        started = time.perf_counter()
        objects = encode_outputs(
            volume, labels, label_names, summary["labels"], pipeline, provenance, urgent
        )
        destinations = list(pipeline.destinations)
        if pipeline.reply_to_sender:
            attributes = self._store.series_attributes(job.series)
            sender = self._settings.peer_by_ae(attributes.calling_ae) if attributes else None
            if sender is not None and sender.name not in destinations:
                destinations.append(sender.name)
        summary["outputs"] = {}
        summary["seconds"]["encode"] = round(time.perf_counter() - started, 3)
        for kind, dataset in objects.items():
            path = target / f"{kind}.dcm"
            _write_atomically(path, functools.partial(_save_dataset, dataset))
            summary["outputs"][kind] = str(dataset.SOPInstanceUID)
            for destination in destinations:
                wanted = self._settings.peer(destination).results
                if wanted is not None and kind not in wanted:
                    continue
                self._outbox.put(
                    job.id,
                    destination,
                    str(path),
                    str(dataset.SOPInstanceUID),
                    kind,
                    10 if urgent else 0,
                    self._clock(),
                )
        if destinations and self._on_outbox is not None:
            self._on_outbox()

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
        specs: dict[str, ModelSpec] = {}
        for name in sorted({p.model for p in self._settings.pipelines}):
            try:
                specs[name] = load_model_spec(self._settings.inference.model_repository, name)
                self._backend.check(specs[name])
                states[name] = "ready"
            except (ModelNotFound, ModelConfigError, BackendUnavailable) as exc:
                states[name] = str(exc)
                log.error(
                    "model %s is not ready on the %s backend: %s", name, self._backend.name, exc
                )
        for index, pipeline in enumerate(self._settings.pipelines):
            spec = specs.get(pipeline.model)
            labels = spec.labels[1:] if spec else ()
            missing = [label for label in labels if label not in pipeline.segments]
            if pipeline.outputs and missing:
                log.error(
                    "pipelines.%d.segments has no codes for %s: its results cannot be encoded",
                    index,
                    ", ".join(missing),
                )
        return states

    def start(self) -> None:
        self.check_models()
        self.route_pending()
        for index in range(self._settings.inference.workers):
            thread = threading.Thread(target=self._work, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        if self._settings.pipelines:
            # warm up in the background: the first series should not wait for torch + MONAI
            # (a node without pipelines never loads them: ~300 MB less)
            import node.infer.runner  # noqa: F401

        while not self._stopping.is_set():
            try:
                if self.run_next() is not None:
                    continue
            except Exception:
                log.exception("worker loop error; continuing")
            self._wake.wait(1.0)
            self._wake.clear()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._backend.close()

"""One job, start to finish, on a backend: series -> volume -> model -> results on disk.

Runs wherever the node runs its models: in a worker process (the default, see
:mod:`node.jobs.workers`) or in the node's own process. It touches no job store: it gets the
instance paths and the sender, and returns the summary and what to deliver; the orchestrator
records both. torch and MONAI are imported by the first job, not when this module is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import Dataset

from node.domain import Finding, Findings, Job
from node.encode.common import (
    Provenance,
    count_labels,
    series_number,
)
from node.encode.outputs import (
    encode_findings_report,
    encode_heatmap_outputs,
    encode_outputs,
    is_urgent,
)
from node.encode.seg import EncodeError
from node.imaging.volume import Volume, VolumeError, load_series
from node.infer.backend import Backend, InferenceFailed
from node.infer.repository import ModelConfigError, ModelNotFound, ModelSpec, load_model_spec
from node.infer.segments import effective_segments
from node.jobs import provenance
from node.jobs.results import JobResult, ResultObject, result_dir, write_results
from node.runtime import logs
from node.settings import RESEARCH_PREFIX, Pipeline, Settings
from node.store.durable import write_atomically
from node.store.outbox import ResultToSend

# what a retry cannot fix: the job fails at once with the reason
PERMANENT_ERRORS = (ModelNotFound, ModelConfigError, VolumeError, InferenceFailed, EncodeError)

log = logging.getLogger(__name__)


NOTICE_KIND = "notify"  # the outbox kind of a notification
RESEARCH_KIND = "research"  # the outbox kind of a research export (one per series)


def research_exports(pipeline: Pipeline, series_uid: str) -> list[ResultToSend]:
    """The pipeline's ``research`` output: the series, once its job is done, to the research
    destination it names (an outbox item whose UID is the series')."""
    if "research" not in pipeline.outputs or pipeline.research is None:
        return []
    return [ResultToSend(RESEARCH_PREFIX + pipeline.research, series_uid, series_uid,
                         RESEARCH_KIND, 0)]


def addressed(objects: list[ResultObject], pipeline: Pipeline, settings: Settings,
              calling_ae: str | None, urgent: bool = False) -> list[ResultToSend]:
    """Each object for each of the pipeline's destinations (and the calling AE's peer with
    ``reply_to_sender``) that wants its kind (``peers[].results``), with the peers in effect
    when the job completes (``settings``: peers changed live included), and the report (SR,
    else the first object) for each notification that wants it. A destination no
    longer among the peers is still addressed: the sender records why it cannot go."""
    destinations = list(pipeline.destinations)
    if pipeline.reply_to_sender:
        sender = settings.peer_by_ae(calling_ae) if calling_ae else None
        if sender is not None and sender.name not in destinations:
            destinations.append(sender.name)
    deliveries: list[ResultToSend] = []
    for item in objects:
        for destination in destinations:
            peer = settings.peer_by_name(destination)  # gone: the sender dead-letters it
            if peer is None or peer.results is None or item.kind in peer.results:
                deliveries.append(ResultToSend(destination, item.path, item.sop_instance_uid,
                                               item.kind, item.priority))
    # notifications (settings.notify): urgent results, or every one; each names the report
    announced = next((o for o in objects if o.kind == "sr"), objects[0] if objects else None)
    for target in settings.notify:
        if announced is not None and (urgent or target.every_result):
            deliveries.append(ResultToSend(target.destination, announced.path,
                                           announced.sop_instance_uid, NOTICE_KIND,
                                           announced.priority))
    return deliveries


def _patient_header(paths: list[str]) -> Dataset | None:
    """The first instance's patient and study attributes (for redaction), if readable."""
    if not paths:
        return None
    try:
        return pydicom.dcmread(paths[0], stop_before_pixels=True,
                               specific_tags=list(logs.PATIENT_ATTRIBUTES))
    except Exception:  # unreadable: the load reports it, redaction has nothing to add
        return None


def _finding(voxels: int, volume: Volume, min_ml: float) -> Finding:
    """What was found of one label: its size (ml; for a radiograph mm², when the pixel spacing
    is known, and pixels) and whether it counts as present."""
    if volume.projection:
        _, row_mm, col_mm = volume.spacing
        area = round(voxels * row_mm * col_mm, 1) if volume.pixel_spacing_known else None
        return Finding(present=voxels > 0, area_mm2=area, pixels=voxels)
    volume_ml = round(voxels * volume.voxel_volume_ml, 3)
    return Finding(present=volume_ml >= max(min_ml, 1e-9), volume_ml=volume_ml, voxels=voxels)


def _heat_finding(probability: NDArray[np.float32], volume: Volume,
                  threshold: float) -> Finding:
    """A heatmap's finding: its highest probability, present when that reaches the model's
    threshold, and the size of the region where it does."""
    peak = float(probability.max())
    found = _finding(int(np.count_nonzero(probability >= threshold)), volume, 0.0)
    return dataclasses.replace(found, probability=round(peak, 4), present=peak >= threshold)


class JobExecutor:
    """Runs jobs with one backend, in the calling process. The last series loaded is kept, so
    the next pipeline of the same series (same instance files) does not read it again."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self._settings = settings
        self._backend = backend
        self._last: tuple[tuple[str, ...], Volume] | None = None
        # the job's background I/O: the inputs' digests are taken while the series loads and
        # the model runs, and the label map (tens of MB) is written while results are encoded
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-io")

    def _load(self, paths: list[str]) -> Volume:
        key = tuple(str(path) for path in paths)
        if self._last is None or self._last[0] != key:
            self._last = None  # the previous volume can go before the next one is read
            self._last = (key, load_series(paths))
        kept = self._last[1]  # each job gets its own voxels: none sees another's changes
        return dataclasses.replace(kept, voxels=kept.voxels.copy())

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def check(self, model: str, version: int | None = None) -> None:
        """Raise why ``model`` (its ``version``, default the newest) cannot run now (not
        found, misconfigured, backend down)."""
        self._backend.check(load_model_spec(self._settings.inference.model_repository, model,
                                            version))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._backend.close()

    def execute(self, job: Job, paths: list[str]) -> JobResult:
        """Run ``job`` on the instances at ``paths``; no log line of this job, a library's
        warning or a traceback included, shows the patient's values (:func:`logs.redacting`)."""
        with logs.redacting(_patient_header(paths)):
            return self._execute(job, paths)

    def _execute(self, job: Job, paths: list[str]) -> JobResult:
        from node.infer.runner import StageTimes, run_classifier, run_heatmap, run_model

        times = StageTimes()
        started = time.perf_counter()
        pipeline = self._pipeline(job.pipeline)
        spec = load_model_spec(self._settings.inference.model_repository, job.model,
                               pipeline.version)
        self._backend.check(spec)
        if spec.is_slide_model:
            from node.jobs.slides import execute_slide

            return execute_slide(job, paths, spec, pipeline, self._backend, self._settings)
        # the inputs' digests (70 MB for a CT) are taken while the series loads and the
        # model runs, and recorded before anything is encoded
        recorded = self._writer.submit(provenance.record, spec, pipeline, self._backend.name,
                                       paths)
        volume = self._load(paths)
        times.add("load", started)
        summary = provenance.summary_head(spec, self._backend.name,
                                          volume.headers[0] if volume.headers else None)
        target = result_dir(self._settings.node.data_dir, job.series, job.pipeline)
        target.mkdir(parents=True, exist_ok=True)
        maps: NDArray[np.float32] | None = None
        label_map: Future[int] | None = None
        if spec.is_classifier:
            probabilities = run_classifier(volume, spec, self._backend, times)
            labels = np.zeros((0,), dtype=np.uint8)  # a classifier draws nothing
            findings = {name: Finding(present=p >= spec.threshold, probability=p)
                        for name, p in probabilities.items()}
        elif spec.is_heatmap:
            maps = run_heatmap(volume, spec, self._backend, times)
            labels = np.zeros((0,), dtype=np.uint8)  # the maps are the result
            summary["shape"] = list(maps.shape)
            findings = {name: _heat_finding(maps[index], volume, spec.threshold)
                        for index, name in enumerate(spec.labels)}
            stored = np.round(maps * 255).astype(np.uint8)  # as the FRACTIONAL SEG stores them
            write_atomically(target / "heatmap.npy", lambda handle: np.save(handle, stored))
        else:
            labels = run_model(volume, spec, self._backend, times)
            counts = count_labels(labels, max(len(spec.labels), 1))
            summary["shape"] = list(labels.shape)
            findings = {name: _finding(int(counts[value]), volume, spec.min_finding_ml)
                        for value, name in enumerate(spec.labels) if value > 0}
            summary["label_values"] = {name: value for value, name in enumerate(spec.labels)
                                       if value > 0}
            label_map = self._writer.submit(write_atomically, target / "labels.npy",
                                            lambda handle: np.save(handle, labels))
        summary["provenance"], inputs = recorded.result()
        write_atomically(target / "provenance.json", lambda handle: handle.write(json.dumps(
            {**summary["provenance"], "input_files": inputs}, indent=1).encode()))
        summary["labels"] = {name: finding.as_json() for name, finding in findings.items()}
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
        try:
            objects = self._encode(job, volume, labels, spec, summary, findings, target, maps)
        finally:
            if label_map is not None:  # on disk before the job reports it
                waited = time.perf_counter()
                wait_for([label_map])
                seconds = summary["seconds"]
                seconds["write"] = round(seconds.get("write", 0.0) + time.perf_counter()
                                         - waited, 3)
        if label_map is not None:
            label_map.result()  # its error, if writing failed
        summary["result_dir"] = str(target)
        return JobResult(summary, objects)

    def _encode(
        self,
        job: Job,
        volume: Volume,
        labels: NDArray[np.uint8],
        spec: ModelSpec,
        summary: dict[str, Any],
        findings: Findings,
        target: Path,
        maps: NDArray[np.float32] | None = None,
    ) -> list[ResultObject]:
        """SEG / SR / SC as the pipeline asks, written durably (addressed and queued with the
        job's completion). A classifier gives an SR of its findings, a heatmap
        model a FRACTIONAL SEG, the SR and SC; a job that found nothing gives a rule-out SR
        when the pipeline reports negatives."""
        pipeline = self._pipeline(job.pipeline)
        urgent = is_urgent(pipeline, findings, spec.threshold)
        summary["urgent"] = urgent
        found = any(finding.present for finding in findings.values())
        report_negative = (spec.labels_are_findings if pipeline.report_negative is None
                           else pipeline.report_negative)
        summary["outputs"] = {}
        if pipeline.mode == "shadow":  # compared with its live pipeline, never delivered
            summary["shadow_of"] = pipeline.shadow_of
            return []
        if not pipeline.outputs or (not found and not (report_negative
                                                       and "sr" in pipeline.outputs)):
            return []
        made_by = Provenance(
            job.model,
            spec.exact_version,
            volume.series_instance_uid,
            tuple(s.sop_instance_uid for s in volume.slices),
            self._settings.node.ae_title,
            job.series.revision,
            summary["provenance"]["model_sha256"],
        )
        started = time.perf_counter()
        segments = effective_segments(spec, pipeline)
        if spec.is_classifier or not found:
            summary["negative"] = not found
            objects = encode_findings_report(volume, findings, segments, made_by,
                                             urgent)
        elif maps is not None:
            objects = encode_heatmap_outputs(volume, maps, findings, pipeline, segments,
                                             made_by, urgent, spec.threshold)
        else:
            objects = encode_outputs(
                volume, labels, spec.labels, findings, pipeline, segments, made_by,
                urgent,
            )
        summary["seconds"]["encode"] = round(time.perf_counter() - started, 3)
        if job.series.revision > 1:
            log.info("series %s revision %d: its %s results (series numbers %s) supersede "
                     "those of revision(s) 1-%d", job.series.series_instance_uid,
                     job.series.revision, "/".join(k.upper() for k in objects),
                     ", ".join(str(series_number(k, job.series.revision)) for k in objects),
                     job.series.revision - 1)
        started = time.perf_counter()
        written = write_results(objects, target, summary, urgent)
        summary["seconds"]["write"] = round(time.perf_counter() - started, 3)
        return written

    def _pipeline(self, name: str) -> Pipeline:
        for pipeline in self._settings.pipelines:
            if pipeline.name == name:
                return pipeline
        raise ModelConfigError(f"pipeline {name!r} is no longer configured")


"""``ainode replay JOB``: run a finished job again from its spooled instances with the model
version it recorded, in a scratch folder, and say whether every output object is identical to
the one delivered (every attribute and the pixel data; UIDs, dates and times aside), so a
hospital can show that a result can be regenerated. The recorded provenance is checked first:
the same input files (SHA-256) and the same model files."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset

from node.domain import Job, SeriesKey
from node.infer.repository import load_model_spec
from node.jobs import provenance
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.outbox import RESULT_KINDS
from node.store.queue import JobQueue

IGNORED_VRS = {"UI", "DA", "TM", "DT"}  # UIDs, dates and times


class ReplayRefused(Exception):
    """The job cannot be replayed as recorded (its reason says why)."""


@dataclass
class Replay:
    job_id: int
    model: str
    version: str
    compared: dict[str, list[str]] = field(default_factory=dict)  # kind -> differences
    labels_identical: bool | None = None

    @property
    def identical(self) -> bool:
        return bool(self.compared) and not any(self.compared.values()) \
            and self.labels_identical is not False


def differences(first: Dataset, second: Dataset, where: str = "") -> list[str]:
    """Attributes whose values differ (or that only one has), UIDs, dates and times aside;
    sequences item by item."""
    found = []
    for tag in sorted(set(first.keys()) | set(second.keys())):
        one, other = first.get(tag), second.get(tag)
        element = one if one is not None else other
        if element is None or element.VR in IGNORED_VRS:
            continue
        name = where + (element.keyword or str(tag))
        if one is None or other is None:
            found.append(name)
        elif element.VR == "SQ":
            if len(one.value) != len(other.value):
                found.append(name)
                continue
            for index, (a, b) in enumerate(zip(one.value, other.value, strict=True)):
                found.extend(differences(a, b, f"{name}[{index}]."))
        elif one.value != other.value:
            found.append(name)
    return found


def replay(settings: Settings, store: JobStore, job_id: int, backend: Any) -> Replay:
    """Run job ``job_id`` again on ``backend``; :class:`ReplayRefused` when it cannot be run
    as recorded."""
    from node.jobs.execute import JobExecutor

    origin = JobQueue(store).origin(job_id)
    if origin is None or not origin[2]:
        raise ReplayRefused(f"job {job_id} is unknown or has not finished")
    pipeline_name, model, result_json, series_uid, _ = origin
    result = json.loads(result_json)
    recorded = result.get("provenance")
    if not recorded or "result_dir" not in result:
        raise ReplayRefused(f"job {job_id} recorded no provenance (made before ainode kept it)")
    folder = Path(result["result_dir"])
    revision = int(folder.parent.name)
    paths = store.instance_paths(SeriesKey(series_uid, revision))
    if provenance.combined(provenance.input_digests(paths)) != recorded["inputs_sha256"]:
        raise ReplayRefused(f"job {job_id}: the spooled instances are not the ones it read "
                            "(removed by retention, or changed)")
    spec = load_model_spec(settings.inference.model_repository, model,
                           int(recorded["repository_version"]))
    if provenance.model_digest(spec) != recorded["model_sha256"]:
        raise ReplayRefused(f"job {job_id}: the files of {model} v{spec.triton_version} have "
                            "changed since it ran")
    pipeline = next((p for p in settings.pipelines if p.name == pipeline_name), None)
    if pipeline is None:
        raise ReplayRefused(f"job {job_id}: its pipeline {pipeline_name!r} is not configured")
    with tempfile.TemporaryDirectory(prefix="ainode-replay-") as scratch:
        pinned = pipeline.model_copy(update={"version": spec.triton_version})
        again = settings.model_copy(update={
            "node": settings.node.model_copy(update={"data_dir": Path(scratch)}),
            "pipelines": [pinned if p.name == pipeline_name else p for p in settings.pipelines]})
        executor = JobExecutor(again, backend)
        job = Job(job_id, SeriesKey(series_uid, revision), pipeline_name, model, attempts=1)
        fresh = Path(executor.execute(job, paths).summary["result_dir"])
        report = Replay(job_id, model, recorded["version"])
        for kind in RESULT_KINDS:
            old, new = folder / f"{kind}.dcm", fresh / f"{kind}.dcm"
            if old.is_file() or new.is_file():
                report.compared[kind] = (["(missing on one side)"] if not (
                    old.is_file() and new.is_file()) else differences(
                    pydicom.dcmread(old), pydicom.dcmread(new)))
        if (folder / "labels.npy").is_file() and (fresh / "labels.npy").is_file():
            import numpy as np

            report.labels_identical = bool(np.array_equal(np.load(folder / "labels.npy"),
                                                          np.load(fresh / "labels.npy")))
    return report

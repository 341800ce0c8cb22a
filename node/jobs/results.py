"""What a job leaves behind: its result objects on disk and its summary, and where they go.

Shared by the volume jobs (:mod:`node.jobs.execute`) and the slide jobs (:mod:`node.jobs.slides`).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import Dataset

from node.domain import SeriesKey
from node.encode.common import stamp_series_created
from node.store.durable import write_atomically
from node.store.layout import DataDir
from node.store.spool import path_component


@dataclass(frozen=True, slots=True)
class ResultObject:
    """One result file a job wrote (a SEG, SR or SC), before it is addressed to peers."""

    kind: str
    path: str
    sop_instance_uid: str
    priority: int


@dataclass(frozen=True)
class JobResult:
    """What a job produced: its summary (stored with the job) and its result objects."""

    summary: dict[str, Any]
    objects: list[ResultObject] = field(default_factory=list)


def result_dir(data_dir: Path, key: SeriesKey, pipeline: str) -> Path:
    """Where a job's files go. The series UID comes from received data: it is used only as a
    safe path component (a hash when it is not a well-formed UID), never as given."""
    return (
        DataDir(data_dir).results(key.series_instance_uid) / str(key.revision)
        / path_component(pipeline)
    )


def _save_dataset(dataset: Dataset, handle: BinaryIO) -> None:
    dataset.save_as(handle, enforce_file_format=True)


def write_results(objects: dict[str, Dataset], target: Path, summary: dict[str, Any],
                  urgent: bool) -> list[ResultObject]:
    """Each result object, stamped with its series' creation time, written durably to
    ``<target>/<kind>.dcm`` and named in the summary's outputs."""
    created = dt.datetime.now()
    written: list[ResultObject] = []
    for kind, dataset in objects.items():
        stamp_series_created(dataset, created)
        path = target / f"{kind}.dcm"
        write_atomically(path, functools.partial(_save_dataset, dataset))
        summary.setdefault("outputs", {})[kind] = str(dataset.SOPInstanceUID)
        written.append(ResultObject(kind, str(path), str(dataset.SOPInstanceUID),
                                    10 if urgent else 0))
    return written

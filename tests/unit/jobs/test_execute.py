"""The job executor reads a series once for all the pipelines that run on it, and gives each
job its own voxels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import node.jobs.execute
from node.jobs.execute import JobExecutor
from node.settings import Settings

MR = sorted((Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mr-brain")
            .glob("*.dcm"))


def test_the_same_series_is_read_once_and_each_job_gets_its_own_voxels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    real = node.jobs.execute.load_series

    def counting(paths: Any) -> Any:
        reads.append(len(paths))
        return real(paths)

    monkeypatch.setattr(node.jobs.execute, "load_series", counting)
    executor = JobExecutor(Settings(), backend=None)  # type: ignore[arg-type]
    paths = [str(p) for p in MR]
    first = executor._load(paths)
    first.voxels[:] = -1  # a job that changes its voxels ...
    second = executor._load(paths)
    assert reads == [len(MR)]  # ... read once
    assert not np.shares_memory(first.voxels, second.voxels)
    assert second.voxels.max() > 0  # ... does not change the next job's
    executor._load(paths[:-1])
    assert reads == [len(MR), len(MR) - 1]  # other files: read again

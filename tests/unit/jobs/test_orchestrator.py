"""The orchestrator's end of a job, with a fake executor (this module only): a job whose
results cannot be addressed (the store unreadable then) is retried with its reason instead
of staying leased."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from node.domain import Job
from node.jobs.orchestrator import Orchestrator
from node.jobs.results import JobResult, ResultObject
from node.settings import Settings
from tests.support.node import store_with_ct


class _Done:
    def execute(self, job: Job, paths: list[str]) -> JobResult:
        return JobResult({"labels": {}, "urgent": False},
                         [ResultObject("sr", "/results/sr.dcm", "1.2.3.4", 0)])


def test_results_that_cannot_be_addressed_retry_the_job_with_the_reason(tmp_path: Path
                                                                        ) -> None:
    settings = Settings.model_validate({
        "node": {"data_dir": str(tmp_path / "var")},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}],
        "pipelines": [{"name": "ct", "match": {"modality": "CT"}, "model": "ct_body_seg",
                       "destinations": ["PACS"]}],
    })
    store, key = store_with_ct(tmp_path)
    reads: list[int] = []

    def current() -> Settings:  # the live peers: unreadable at the job's end
        reads.append(1)
        raise ConnectionError("job store unreachable")

    clock: Any = lambda: 100.0  # noqa: E731
    orchestrator = Orchestrator(settings, store, executor_factory=lambda _: _Done(),
                                clock=clock, current=current)
    orchestrator.series_complete(key)
    assert orchestrator.run_next() is not None
    assert reads
    ((state, error, lease),) = store.query("SELECT state, error, lease_until FROM jobs")
    assert state == "queued" and "job store unreachable" in str(error) and lease is None
    assert store.query("SELECT COUNT(*) FROM outbox") == [(0,)]


class _DiskFull:
    """Fails with ENOSPC (as the result writer does on a full disk) until space returns."""

    def __init__(self) -> None:
        self.full = True
        self.calls = 0

    def execute(self, job: Job, paths: list[str]) -> JobResult:
        self.calls += 1
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return _Done().execute(job, paths)


def test_a_full_disk_is_an_outage_retried_without_attempts_until_space_returns(
        tmp_path: Path) -> None:
    """Issue 24 §4: ENOSPC during a job is retried over inference.retry_window_s without
    using attempts (like an unreachable backend), and the job runs when space returns; it
    fails only when the window is over."""
    settings = Settings.model_validate({
        "node": {"data_dir": str(tmp_path / "var"), "min_free_disk_mb": 0},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}],
        "inference": {"job_attempts": 2, "retry_window_s": 3600},
        "pipelines": [{"name": "ct", "match": {"modality": "CT"}, "model": "ct_body_seg",
                       "destinations": ["PACS"]}],
    })
    store, key = store_with_ct(tmp_path)
    executor = _DiskFull()
    now = [100.0]
    orchestrator = Orchestrator(settings, store, executor_factory=lambda _: executor,
                                clock=lambda: now[0])
    orchestrator.series_complete(key)
    for _ in range(8):  # far more than job_attempts
        assert orchestrator.run_next() is not None
        ((state, error, attempts),) = store.query(
            "SELECT state, error, attempts - transient FROM jobs")  # attempts counted
        assert state == "queued" and "No space left" in str(error), (state, error)
        now[0] += 400  # past the longest backoff
    assert executor.calls == 8 and attempts == 0
    executor.full = False
    assert orchestrator.run_next() is not None
    assert store.query("SELECT state FROM jobs") == [("done",)]


def test_a_disk_below_its_floor_holds_jobs_before_they_run(tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "node": {"data_dir": str(tmp_path / "var"), "min_free_disk_mb": 10**9},
        "inference": {"job_attempts": 1},
        "pipelines": [{"name": "ct", "match": {"modality": "CT"}, "model": "ct_body_seg"}],
    })
    store, key = store_with_ct(tmp_path)
    executor = _DiskFull()
    orchestrator = Orchestrator(settings, store, executor_factory=lambda _: executor,
                                clock=lambda: 100.0)
    orchestrator.series_complete(key)
    assert orchestrator.run_next() is not None
    ((state, error),) = store.query("SELECT state, error FROM jobs")
    assert state == "queued" and "below node.min_free_disk_mb" in str(error)
    assert executor.calls == 0

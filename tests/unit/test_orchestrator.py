"""The orchestrator's end of a job, with a fake executor (this module only): a job whose
results cannot be addressed (the store unreadable then) is retried with its reason instead
of staying leased."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.domain import Job
from node.execute import JobResult, ResultObject
from node.pipeline import Orchestrator
from node.settings import Settings
from tests.conftest import store_with_ct


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

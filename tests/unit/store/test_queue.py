from __future__ import annotations

from pathlib import Path

from node.domain import JobState, SeriesKey
from node.store.jobs import JobStore
from node.store.queue import JobQueue

KEY = SeriesKey("1.2.3", 1)


def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(JobStore(tmp_path / "jobs.sqlite3"))


def test_enqueue_is_idempotent_and_claim_leases(tmp_path: Path) -> None:
    q = queue(tmp_path)
    assert q.enqueue(KEY, [("ct-body", "ct_body_seg"), ("other", "m")], now=10) == 2
    assert q.enqueue(KEY, [("ct-body", "ct_body_seg")], now=11) == 0
    first = q.claim(now=12, lease_s=100)
    second = q.claim(now=12, lease_s=100)
    assert first and second and (first.pipeline, second.pipeline) == ("ct-body", "other")
    assert first.attempts == 1
    assert q.claim(now=13, lease_s=100) is None  # both leased
    again = q.claim(now=200, lease_s=100)  # lease expired: the worker died
    assert again is not None and again.id == first.id and again.attempts == 2


def test_retry_waits_then_fail_is_final(tmp_path: Path) -> None:
    q = queue(tmp_path)
    q.enqueue(KEY, [("p", "m")], now=0)
    job = q.claim(now=0, lease_s=60)
    assert job is not None
    q.retry(job.id, "Triton down", delay_s=30, now=1)
    assert q.claim(now=20, lease_s=60) is None
    job = q.claim(now=31, lease_s=60)
    assert job is not None and job.attempts == 2
    q.fail(job.id, "model 'x' is not in the repository", now=32)
    assert q.claim(now=10_000, lease_s=60) is None
    (summary,) = q.jobs()
    assert summary.state == JobState.FAILED and "not in the repository" in (summary.error or "")
    assert q.counts()["failed"] == 1


def test_complete_keeps_the_result_and_priority_orders(tmp_path: Path) -> None:
    q = queue(tmp_path)
    q.enqueue(KEY, [("routine", "m")], now=0)
    q.enqueue(SeriesKey("9.9", 1), [("urgent", "m")], now=1, priority=10)
    job = q.claim(now=2, lease_s=60)
    assert job is not None and job.pipeline == "urgent"
    q.complete(job.id, {"labels": {"lesion": {"volume_ml": 1.5}}}, now=3)
    done = next(j for j in q.jobs() if j.id == job.id)
    assert done.state == JobState.DONE and done.result == {"labels": {"lesion": {"volume_ml": 1.5}}}

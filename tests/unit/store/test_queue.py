from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from node.domain import InstanceRef, JobState, SeriesKey
from node.store.jobs import JobStore
from node.store.outbox import Outbox, ResultToSend
from node.store.queue import JobQueue, LeaseLost

KEY = SeriesKey("1.2.3", 1)
NewStore = Callable[[], JobStore]


def queue(new_store: NewStore) -> JobQueue:
    return JobQueue(new_store())


def test_enqueue_is_idempotent_and_claim_leases(new_store: NewStore) -> None:
    q = queue(new_store)
    assert q.enqueue(KEY, [("ct-body", "ct_body_seg"), ("other", "m")], now=10) == 2
    assert q.enqueue(KEY, [("ct-body", "ct_body_seg")], now=11) == 0
    first = q.claim(now=12, lease_s=100)
    second = q.claim(now=12, lease_s=100)
    assert first and second and (first.pipeline, second.pipeline) == ("ct-body", "other")
    assert first.attempts == 1 and first.owner != second.owner
    assert q.claim(now=13, lease_s=100) is None  # both leased
    again = q.claim(now=200, lease_s=100)  # lease expired: the worker died
    assert again is not None and again.id == first.id and again.attempts == 2


def test_retry_waits_then_fail_is_final(new_store: NewStore) -> None:
    q = queue(new_store)
    q.enqueue(KEY, [("p", "m")], now=0)
    job = q.claim(now=0, lease_s=60)
    assert job is not None
    q.retry(job, "Triton down", delay_s=30, now=1)
    assert q.claim(now=20, lease_s=60) is None
    job = q.claim(now=31, lease_s=60)
    assert job is not None and job.attempts == 2
    q.fail(job, "model 'x' is not in the repository", now=32)
    assert q.claim(now=10_000, lease_s=60) is None
    (summary,) = q.jobs()
    assert summary.state == JobState.FAILED and "not in the repository" in (summary.error or "")
    assert q.counts()["failed"] == 1


def test_complete_keeps_the_result_and_priority_orders(new_store: NewStore) -> None:
    q = queue(new_store)
    q.enqueue(KEY, [("routine", "m")], now=0)
    q.enqueue(SeriesKey("9.9", 1), [("urgent", "m")], now=1, priority=10)
    job = q.claim(now=2, lease_s=60)
    assert job is not None and job.pipeline == "urgent"
    q.complete(job, {"labels": {"lesion": {"volume_ml": 1.5}}}, now=3)
    done = next(j for j in q.jobs() if j.id == job.id)
    assert done.state == JobState.DONE and done.result == {"labels": {"lesion": {"volume_ml": 1.5}}}


def test_a_job_that_keeps_killing_its_worker_fails_at_claim_instead_of_looping(
    new_store: NewStore,
) -> None:
    """Each claim whose worker died (lease ran out, or the node restarted) counts; at the cap
    the job fails with a reason instead of being run (and crashing the node) again."""
    q = queue(new_store)
    q.enqueue(KEY, [("p", "m")], now=0)
    now = 0.0
    for attempt in (1, 2):
        job = q.claim(now=now, lease_s=10, max_attempts=3)
        assert job is not None and job.attempts == attempt
        now += 11  # the worker died: the lease runs out
    job = q.claim(now=now, lease_s=10, max_attempts=3)
    assert job is not None and job.attempts == 3
    assert q.reset_running(now=now + 1) == 1  # the node restarts after the third crash
    assert q.claim(now=now + 2, lease_s=10, max_attempts=3) is None
    (summary,) = q.jobs()
    assert summary.state == JobState.FAILED
    assert summary.error and summary.error.startswith("gave up after 3 attempts")


def test_heartbeat_keeps_a_long_job_and_only_the_owner_finishes(new_store: NewStore) -> None:
    q = queue(new_store)
    q.enqueue(KEY, [("p", "m")], now=0)
    job = q.claim(now=0, lease_s=10)
    assert job is not None
    for now in (5, 12, 19, 26):  # a job running far longer than one lease
        assert q.heartbeat([job], now=now, lease_s=10) == []
        assert q.claim(now=now + 1, lease_s=10) is None, "a live job is never claimed twice"
    stale = job
    taken = q.claim(now=100, lease_s=10)  # heartbeats stopped: taken over
    assert taken is not None and taken.id == stale.id and taken.owner != stale.owner
    assert q.heartbeat([stale], now=101, lease_s=10) == [stale]
    with pytest.raises(LeaseLost):
        q.complete(stale, {"from": "the stale worker"}, now=102)
    q.complete(taken, {"from": "the owner"}, now=103)
    (summary,) = q.jobs()
    assert summary.state == JobState.DONE and summary.result == {"from": "the owner"}


def test_stop_hands_jobs_back_without_counting_and_start_resets_leftovers(
    new_store: NewStore,
) -> None:
    q = queue(new_store)
    q.enqueue(KEY, [("a", "m"), ("b", "m")], now=0)
    a, b = q.claim(now=0, lease_s=1800), q.claim(now=0, lease_s=1800)
    assert a and b
    assert q.release_held([a], now=1) == 1  # graceful stop: a is handed back at once
    again = q.claim(now=2, lease_s=1800)
    assert again is not None and again.id == a.id and again.attempts == 1  # not counted
    assert q.reset_running(now=3) == 2  # a restart after a crash: no 30-minute wait
    assert {j.state for j in q.jobs()} == {JobState.QUEUED}
    assert q.claim(now=3, lease_s=1800) is not None


def test_transient_retries_do_not_use_up_attempts(new_store: NewStore) -> None:
    q = queue(new_store)
    q.enqueue(KEY, [("p", "m")], now=0)
    for now in range(0, 100, 10):
        job = q.claim(now=now, lease_s=5, max_attempts=2)
        assert job is not None and job.attempts == 1
        assert job.first_failed_at == (None if now == 0 else 0)
        q.retry(job, "Triton down", delay_s=1, now=now, counted=False)


def test_requeue_failed_jobs(new_store: NewStore) -> None:
    q = queue(new_store)
    q.enqueue(KEY, [("a", "m"), ("b", "m")], now=0)
    a, b = q.claim(now=0, lease_s=60), q.claim(now=0, lease_s=60)
    assert a and b
    q.fail(a, "broken", now=1)
    q.complete(b, {}, now=1)
    assert q.requeue([b.id, 99], now=2) == []  # only failed jobs can be requeued
    assert q.requeue(None, now=2) == [a.id]
    again = q.claim(now=3, lease_s=60)
    assert again is not None and again.id == a.id and again.attempts == 1


def _ref(sop: str, series: str = "1.2.3") -> InstanceRef:
    return InstanceRef(sop, "1.2.840.10008.5.1.4.1.1.2", series, "1.2", "1.2.840.10008.1.2.1",
                       "CT", f"/spool/{sop}.dcm", 10, "MOD", "AINODE")


def test_a_new_revision_supersedes_unfinished_jobs_and_withdraws_their_results(
    new_store: NewStore,
) -> None:
    """A re-sent instance moves to revision 2: the revision-1 jobs that would run on (or
    deliver) a truncated series stop; delivered ones are marked superseded."""
    store = new_store()
    q, outbox = JobQueue(store), Outbox(store)
    for sop in ("1", "2", "3"):
        store.record_instance(_ref(sop), now=0)
    from node.domain import CompletionReason

    assert store.complete_series(KEY, CompletionReason.QUIET, now=1)
    q.enqueue(KEY, [("running", "m"), ("done", "m"), ("queued", "m")], now=1)
    running = q.claim(now=2, lease_s=60)
    done = q.claim(now=2, lease_s=60)
    assert running and done
    q.complete(done, {}, now=3, also=lambda db: None)
    outbox.put(done.id, ResultToSend("PACS", "/r/seg.dcm", "9.9", "seg", 0), now=3)

    outcome = store.record_instance(_ref("2"), now=4)  # the PACS re-sends one instance
    assert outcome.series == SeriesKey("1.2.3", 2) and outcome.duplicate

    states = {j.pipeline: (j.state, j.superseded_by) for j in q.jobs()}
    assert states == {"queued": (JobState.SUPERSEDED, 2), "running": (JobState.SUPERSEDED, 2),
                      "done": (JobState.DONE, 2)}
    assert q.claim(now=5, lease_s=60) is None
    with pytest.raises(LeaseLost):
        q.complete(running, {}, now=6)
    assert outbox.ready(now=10) == {}
    assert outbox.by_destination()["PACS"]["superseded"] == 1


def test_a_failed_commit_leaves_the_store_usable(tmp_path: Path) -> None:
    """SQLite keeps a transaction open when COMMIT itself fails (disk full, I/O error, a
    deferred constraint): the store must roll back, or every later write fails."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    with store.transaction() as db:
        db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE child (parent_id INTEGER REFERENCES parent(id)"
                   " DEFERRABLE INITIALLY DEFERRED)")
    with store.reading() as db:
        db.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
        db.execute("INSERT INTO child VALUES (42)")  # fails only at COMMIT
    outcome = store.record_instance(_ref("1"), now=1)  # the next C-STORE is indexed
    assert outcome.instance_count == 1


def test_listing_by_state_reaches_past_the_newest_rows(new_store: NewStore) -> None:
    """A state filter is applied before the limit: an older receiving series, an older failed
    job and an older dead letter are found behind newer rows of other states."""
    from node.domain import CompletionReason, SeriesState

    store = new_store()
    store.record_instance(_ref("1.9.1", "9.1"), now=1)  # stays receiving
    newer = store.record_instance(_ref("1.9.2", "9.2"), now=2).series
    store.complete_series(newer, CompletionReason.QUIET, now=3)
    assert [s.state for s in store.list_series(1)] == [SeriesState.COMPLETE]
    (receiving,) = store.list_series(1, SeriesState.RECEIVING)
    assert receiving.series_instance_uid == "9.1"

    q = JobQueue(store)
    q.enqueue(SeriesKey("9.1", 1), [("p", "m")], now=4)
    old = q.claim(now=4, lease_s=60)
    assert old is not None
    q.fail(old, "model missing", now=5)
    q.enqueue(SeriesKey("9.2", 1), [("p", "m"), ("other", "m")], now=6)
    assert q.jobs(1)[0].state == JobState.QUEUED
    assert [j.id for j in q.jobs(1, JobState.FAILED)] == [old.id]
    assert [j.pipeline for j in q.jobs(5, JobState.QUEUED, "other")] == ["other"]

    outbox = Outbox(store)
    outbox.put(old.id, ResultToSend("PACS", "/r/a.dcm", "5.1", "seg", 0), now=6)
    (item,) = outbox.items(1)
    outbox.dead(item[0], "refused: 0xA900", now=7)
    outbox.put(old.id, ResultToSend("PACS", "/r/b.dcm", "5.2", "sr", 0), now=8)
    assert outbox.items(1)[0][4] == "queued"
    assert [i[3] for i in outbox.items(1, "dead")] == ["5.1"]


def test_looking_for_work_when_there_is_none_takes_no_write_lock(tmp_path: Path) -> None:
    """Workers and senders look for work whenever another process commits (each received
    instance): with nothing ready, neither takes SQLite's write lock, so neither waits for,
    nor holds up, the receiver's writes. Here another connection holds the write lock while
    they look; with work ready they do wait for it (the busy timeout), as they must."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    q, outbox = JobQueue(store), Outbox(store)
    receiver = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    receiver.execute("PRAGMA busy_timeout=0")
    receiver.execute("BEGIN IMMEDIATE")  # the receiver, indexing an instance
    try:
        assert q.claim(now=10, lease_s=100) is None
        assert outbox.ready(now=10) == {}
    finally:
        receiver.execute("ROLLBACK")
    assert q.enqueue(KEY, [("ct-body", "ct_body_seg")], now=11) == 1
    receiver.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.database._db.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
        q.claim(now=12, lease_s=100)  # work is ready: it needs the write lock
    receiver.execute("ROLLBACK")
    job = q.claim(now=12, lease_s=100)
    assert job is not None and job.pipeline == "ct-body"

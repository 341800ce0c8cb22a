"""The job store's engines: schema versions, concurrent claims, sender leases, wake-ups; on
SQLite and on a real PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from node.domain import SeriesKey
from node.store.database import PostgresDatabase, SchemaTooNew
from node.store.jobs import JobStore
from node.store.outbox import Outbox, ResultToSend
from node.store.queue import JobQueue
from node.store.schema import VERSION

NewStore = Callable[[], JobStore]


def test_a_store_with_a_newer_schema_is_refused(new_store: NewStore) -> None:
    store = new_store()
    with store.transaction() as db:
        db.execute("INSERT INTO ainode_schema (version, applied_at) VALUES (?, ?)",
                   (VERSION + 1, 0.0))
    with pytest.raises(SchemaTooNew, match=rf"schema version {VERSION + 1}, newer than"):
        JobStore(store.database)


def test_a_store_from_before_versioning_is_migrated(tmp_path: Path) -> None:
    """A first-release SQLite file (no version table, no later columns) opens and gains them."""
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT"
                   " NOT NULL, revision INTEGER NOT NULL, pipeline TEXT NOT NULL, model TEXT NOT"
                   " NULL, priority INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, attempts"
                   " INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL, lease_until REAL,"
                   " error TEXT, result TEXT, created_at REAL NOT NULL, updated_at REAL NOT"
                   " NULL, UNIQUE (series_uid, revision, pipeline))")
        db.execute("INSERT INTO jobs (series_uid, revision, pipeline, model, state, not_before,"
                   " created_at, updated_at) VALUES ('1.2', 1, 'p', 'm', 'queued', 0, 0, 0)")
    store = JobStore(path)
    job = JobQueue(store).claim(now=1, lease_s=60)
    assert job is not None and job.pipeline == "p" and job.owner
    with store.reading() as db:
        assert db.execute("SELECT MAX(version) FROM ainode_schema").fetchone()[0] == VERSION
    store.close()


def test_concurrent_claimers_never_share_a_job(new_store: NewStore) -> None:
    """Eight threads, each with its own store connection (as separate workers would), claim
    60 jobs: each job is claimed exactly once."""
    first = new_store()
    JobQueue(first).enqueue(SeriesKey("1.2", 1), [(f"p{i}", "m") for i in range(60)], now=0)
    if first.dialect == "postgresql":
        url = first.database.url  # type: ignore[attr-defined]
        stores = [JobStore(PostgresDatabase(url)) for _ in range(8)]
    else:
        stores = [JobStore(Path(first.database.location)) for _ in range(8)]
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(store: JobStore) -> None:
        queue = JobQueue(store)
        while (job := queue.claim(now=1, lease_s=600)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.close()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60


def test_a_sender_leases_what_it_takes(new_store: NewStore) -> None:
    """Two senders on one store: what one took is not offered to the other until its lease
    runs out (the first died); a recorded outcome ends the lease."""
    store = new_store()
    outbox = Outbox(store)
    outbox.put(1, ResultToSend("PACS", "/r/a.dcm", "1.1", "seg", 0), now=0)
    outbox.put(1, ResultToSend("PACS", "/r/b.dcm", "1.2", "sr", 10), now=0)
    taken = outbox.ready(now=1, lease_s=60)
    assert [i.sop_instance_uid for i in taken["PACS"]] == ["1.2", "1.1"]  # urgent first
    assert outbox.ready(now=2, lease_s=60) == {}
    outbox.retry(taken["PACS"][0].id, "peer down", delay_s=5, now=3)
    assert [i.sop_instance_uid for i in outbox.ready(now=9)["PACS"]] == ["1.2"]
    assert [i.sop_instance_uid for i in outbox.ready(now=62)["PACS"]] == ["1.1"]


def test_the_only_sender_takes_back_a_dead_predecessors_leases_at_start(
        new_store: NewStore) -> None:
    """A sender killed mid-delivery held its items for a lease of minutes; the next sender on
    a store it owns alone releases them at start, so they go at once."""
    store = new_store()
    outbox = Outbox(store)
    outbox.put(1, ResultToSend("PACS", "/r/a.dcm", "1.1", "seg", 0), now=0)
    outbox.put(1, ResultToSend("PACS", "/r/b.dcm", "1.2", "sr", 0), now=0)
    taken = outbox.ready(now=1, lease_s=600)["PACS"]
    outbox.sent(taken[0].id, now=2)
    assert outbox.ready(now=3) == {}  # the other is leased to the dead sender
    assert outbox.release_leases() == 1
    assert [i.sop_instance_uid for i in outbox.ready(now=4)["PACS"]] == [
        taken[1].sop_instance_uid]


def test_queued_work_wakes_other_processes(new_store: NewStore) -> None:
    """A job queued through one connection wakes a watcher on another (LISTEN/NOTIFY on
    PostgreSQL, data_version on SQLite): no polling interval between them."""
    store = new_store()
    jobs, outbox = threading.Event(), threading.Event()
    store.database.watch({"jobs": jobs, "outbox": outbox})
    assert jobs.wait(5)  # a watcher wakes everything once when it (re)connects
    jobs.clear()
    other = (JobStore(PostgresDatabase(store.database.url))  # type: ignore[attr-defined]
             if store.dialect == "postgresql" else JobStore(Path(store.database.location)))
    JobQueue(other).enqueue(SeriesKey("1.2", 1), [("p", "m")], now=0)
    assert jobs.wait(5)
    other.close()

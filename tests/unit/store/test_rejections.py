"""Withdrawn results in the store: once per job, queued deliveries held back, and a rejection
note that waits in the outbox until the replacing job's results reached its destination."""

from __future__ import annotations

from collections.abc import Callable

from node.domain import SeriesKey
from node.store import rejections
from node.store.jobs import JobStore
from node.store.outbox import Outbox, ResultToSend
from node.store.queue import JobQueue

NewStore = Callable[[], JobStore]


def _done_job(store: JobStore, revision: int, objects: list[str]) -> int:
    queue, outbox = JobQueue(store), Outbox(store)
    queue.enqueue(SeriesKey("1.2.3", revision), [("p", "m")], now=1)
    job = queue.claim(now=2, lease_s=60)
    assert job is not None
    queue.complete(job, {}, now=3)
    for uid in objects:
        outbox.put(job.id, ResultToSend("PACS", f"/r/{uid}.dcm", uid, "seg", 0), now=3)
    return job.id


def test_a_note_waits_for_the_results_that_replace_what_it_rejects(new_store: NewStore) -> None:
    store = new_store()
    outbox, store_rejections = Outbox(store), rejections.Rejections(store)
    old = _done_job(store, 1, ["2.25.1"])
    (item,) = outbox.ready(10)["PACS"]
    outbox.sent(item.id, 11)
    new = _done_job(store, 2, ["2.25.2"])
    with store.transaction() as db:
        assert rejections.supersede(db, new, "1.2.3", 2, "p", 12) == [old]
        assert rejections.supersede(db, new, "1.2.3", 2, "p", 12) == []  # once per job
    assert [d.sop_instance_uid for d in store_rejections.delivered(old)] == ["2.25.1"]
    store_rejections.queue(old, [ResultToSend("PACS", "/r/kos.dcm", "2.25.9", "kos", 0)],
                           new, "note for PACS", 13)
    ready = outbox.ready(20)["PACS"]
    assert [i.sop_instance_uid for i in ready] == ["2.25.2"]  # the note waits
    outbox.dead(ready[0].id, "refused", 21)
    assert outbox.ready(100) == {}  # a dead replacement holds the note back too
    outbox.requeue([ready[0].id], 101)
    (again,) = outbox.ready(102)["PACS"]
    outbox.sent(again.id, 103)
    (note,) = outbox.ready(700)["PACS"]
    assert note.sop_instance_uid == "2.25.9" and note.kind == "kos"


def test_withdrawing_holds_back_what_was_not_sent_and_happens_once(new_store: NewStore) -> None:
    store = new_store()
    job = _done_job(store, 1, ["2.25.1", "2.25.2"])
    outbox = Outbox(store)
    first = outbox.ready(10)["PACS"][0]
    outbox.sent(first.id, 11)
    withdraw = rejections.Rejections(store)
    assert withdraw.withdraw(job, "safety", "wrong", "ops", 12, lambda db: None) == "withdrawn"
    assert withdraw.withdraw(job, "safety", "wrong", "ops", 13, lambda db: None) == "already"
    assert withdraw.withdraw(999, "safety", "wrong", "ops", 13, lambda db: None) == "unknown"
    assert outbox.ready(700) == {}  # the unsent object is not sent any more
    assert [d.sop_instance_uid for d in withdraw.delivered(job)] == ["2.25.1"]
    withdraw.failed(job, "not written: disk", 14)
    assert withdraw.withdraw(job, "safety", "again", "ops", 15, lambda db: None) == "withdrawn"
    (pending,) = withdraw.pending()
    assert (pending.job_id, pending.comment, pending.state) == (job, "again", "pending")


def test_a_note_settled_by_one_sender_is_not_queued_again_by_another(new_store: NewStore) -> None:
    store = new_store()
    outbox = Outbox(store)
    job = _done_job(store, 1, ["2.25.1"])
    outbox.sent(outbox.ready(10)["PACS"][0].id, 11)
    both = rejections.Rejections(store)
    assert both.withdraw(job, "safety", "wrong", "ops", 12, lambda db: None) == "withdrawn"
    note = [ResultToSend("PACS", "/r/kos.dcm", "2.25.9", "kos", 10)]
    assert both.queue(job, note, None, "note for PACS", 13)  # the first sender
    (queued,) = outbox.ready(20)["PACS"]
    outbox.sent(queued.id, 21)
    assert not both.queue(job, note, None, "note for PACS", 22)  # a second, late sender
    assert outbox.ready(700) == {}  # the note sent stays sent

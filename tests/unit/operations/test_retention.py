"""Retention (node/retention.py) on both job stores: what goes when, what never goes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from node.audit.trail import AuditTrail
from node.domain import CompletionReason, InstanceRef, SeriesKey
from node.operations.retention import DAY_S, Retention
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.outbox import Outbox, ResultToSend
from node.store.queue import JobQueue
from node.store.spool import path_component

NewStore = Callable[[], JobStore]
T0 = 1_000_000.0


class World:
    """A job store, a spool and results on disk, and a clock the test moves."""

    def __init__(self, store: JobStore, root: Path, **retention: object) -> None:
        self.store = store
        self.root = root
        self.now = T0
        self.disk = 50.0
        self.settings = Settings.model_validate({
            "node": {"data_dir": str(root)},
            "retention": {"days": 1, "failed_days": 3, "high_water_percent": 90, **retention},
        })
        self.retention = Retention(self.settings, store, lambda: self.now,
                                   AuditTrail(store, lambda: self.now), lambda _: self.disk)

    def receive(self, series: str, count: int = 2, study: str = "1.2") -> list[Path]:
        paths = []
        for index in range(count):
            sop = f"{series}.{index}"
            path = self.root / "spool" / study / series / f"{sop}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 100)
            os.utime(path, (self.now, self.now))
            self.store.record_instance(InstanceRef(
                sop, "1.2.840.10008.5.1.4.1.1.2", series, study, "1.2.840.10008.1.2", "CT",
                str(path), 100, "MOD", "AINODE"), self.now)
            paths.append(path)
        return paths

    def complete(self, series: str, revision: int = 1, routed: bool = True) -> SeriesKey:
        key = SeriesKey(series, revision)
        self.store.complete_series(key, CompletionReason.QUIET, self.now)
        if routed:
            self.store.set_route(key, "routed", "ct-body")
        return key

    def run_job(self, key: SeriesKey, *, fail: bool = False, deliver: str | None = "sent"
                ) -> Path:
        queue = JobQueue(self.store)
        queue.enqueue(key, [("ct-body", "model")], now=self.now)
        job = queue.claim(now=self.now, lease_s=60)
        assert job is not None
        results = (self.root / "results" / path_component(key.series_instance_uid)
                   / str(key.revision) / "ct-body")
        results.mkdir(parents=True, exist_ok=True)
        (results / "seg.dcm").write_bytes(b"seg")
        if fail:
            queue.fail(job, "model refused the input", self.now)
            return results
        outbox = Outbox(self.store)

        def put(db: object) -> None:
            from node.store.outbox import put as put_item

            put_item(db, job.id, ResultToSend("PACS", str(results / "seg.dcm"),  # type: ignore[arg-type]
                                              f"{key.series_instance_uid}.9", "SEG", 0), self.now)

        queue.complete(job, {}, self.now, also=put)
        (item,) = [i for i in outbox.items() if i[3] == f"{key.series_instance_uid}.9"]
        if deliver == "sent":
            outbox.sent(item[0], self.now)
        elif deliver == "dead":
            outbox.dead(item[0], "refused", self.now)
        return results

    def deleted(self) -> list[str]:
        return [line.detail for line in self.store.audit_lines() if line.action == "deleted"]


@pytest.fixture
def world(new_store: NewStore, tmp_path: Path) -> World:
    return World(new_store(), tmp_path)


def test_delivered_series_go_after_days_failed_ones_after_failed_days(world: World) -> None:
    delivered = world.receive("1.2.10")
    delivered_results = world.run_job(world.complete("1.2.10"))
    failed = world.receive("1.2.20")
    failed_results = world.run_job(world.complete("1.2.20"), fail=True)
    given_up = world.receive("1.2.30")
    world.run_job(world.complete("1.2.30"), deliver="dead")
    skipped = world.receive("1.2.40")  # no pipeline matched: nothing to deliver
    world.complete("1.2.40")

    world.now = T0 + DAY_S - 1
    assert world.retention.sweep() == 0
    world.now = T0 + DAY_S
    assert world.retention.sweep() == 2
    assert not any(p.exists() for p in delivered + skipped)
    assert not delivered_results.exists()
    assert all(p.exists() for p in failed + given_up) and failed_results.exists()
    assert not (world.root / "spool" / "1.2" / "1.2.10").exists()  # empty folders go too
    assert world.store.query("SELECT COUNT(*) FROM instances WHERE series_uid IN"
                             " ('1.2.10', '1.2.40')") == [(0,)]
    first, _ = sorted(world.deleted())
    assert first.startswith("series 1.2.10: 2 instance file(s)") and "delivered" in first

    world.now = T0 + 3 * DAY_S
    assert world.retention.sweep() == 2
    assert not any(p.exists() for p in failed + given_up)
    assert world.retention.sweep() == 0  # nothing twice
    (line,) = [a for a in world.store.audit_lines() if "1.2.20" in a.detail]
    assert line.objects == (("study", "1.2"), ("series", "1.2.20"))


def test_nothing_pending_is_ever_removed(world: World) -> None:
    receiving = world.receive("1.2.1")  # still receiving
    unrouted = world.receive("1.2.2")
    world.complete("1.2.2", routed=False)
    queued = world.receive("1.2.3")
    JobQueue(world.store).enqueue(world.complete("1.2.3"), [("p", "m")], now=world.now)
    waiting = world.receive("1.2.4")
    world.run_job(world.complete("1.2.4"), deliver=None)  # result still in the outbox
    world.now = T0 + 365 * DAY_S
    world.disk = 99.0  # not even above the high-water mark
    assert world.retention.sweep() == 0
    assert all(p.exists() for p in receiving + unrouted + queued + waiting)
    assert world.deleted() == []


def test_above_the_high_water_mark_the_oldest_delivered_go_first(world: World) -> None:
    old_failed = world.receive("1.2.1")
    world.run_job(world.complete("1.2.1"), fail=True)
    world.now += 10
    older = world.receive("1.2.2")
    world.run_job(world.complete("1.2.2"))
    world.now += 10
    newer = world.receive("1.2.3")
    world.run_job(world.complete("1.2.3"))
    usage = iter([95.0, 92.0, 85.0])
    world.retention._disk_used = lambda _: next(usage)
    assert world.retention.sweep() == 2
    assert not any(p.exists() for p in older + newer)
    assert all(p.exists() for p in old_failed)  # delivered data first
    assert all("high-water mark of 90 %" in d for d in world.deleted())


def test_a_later_revision_keeps_the_series_until_it_settles_and_a_copy_sent_again_stays(
        world: World) -> None:
    world.receive("1.2.5")
    world.run_job(world.complete("1.2.5"))
    world.now += DAY_S + 1
    late = world.receive("1.2.5", count=1, study="1.2")  # same SOP UID sent again: revision 2
    assert world.retention.sweep() == 0  # revision 2 is receiving
    world.run_job(world.complete("1.2.5", revision=2))
    world.now += DAY_S
    os.utime(late[0], (world.now, world.now))  # yet another copy, written, not yet recorded
    assert world.retention.sweep() == 1
    assert late[0].exists()


def test_disabled_retention_removes_nothing(new_store: NewStore, tmp_path: Path) -> None:
    world = World(new_store(), tmp_path, enabled=False)
    files = world.receive("1.2.9")
    world.run_job(world.complete("1.2.9"))
    world.now += 100 * DAY_S
    world.disk = 99.0
    assert world.retention.sweep() == 0 and all(p.exists() for p in files)

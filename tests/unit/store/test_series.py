"""Series completeness and revisions, on real job stores (SQLite and PostgreSQL) with an
injected clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from node.domain import CompletionReason, InstanceRef, SeriesKey
from node.store.jobs import JobStore
from node.store.series import CompletionPolicy, SeriesAssembler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ref(sop: str, series: str = "1.2.3", expected: int | None = None) -> InstanceRef:
    return InstanceRef(sop, "1.2.840.10008.5.1.4.1.1.2", series, "1.2", "1.2.840.10008.1.2",
                       "CT", f"/spool/{sop}.dcm", 10, "MOD", "AINODE", expected)


@pytest.fixture
def store(new_store: Callable[[], JobStore]) -> JobStore:
    return new_store()


def make(store: JobStore, clock: Clock, **policy: object) -> tuple[SeriesAssembler, list]:  # type: ignore[type-arg]
    completed: list[tuple[SeriesKey, CompletionReason]] = []
    assembler = SeriesAssembler(
        store, CompletionPolicy(quiet_seconds=5, **policy),  # type: ignore[arg-type]
        clock, lambda key, reason: completed.append((key, reason)),
    )
    return assembler, completed


def test_quiet_period_completes_once(store: JobStore) -> None:
    clock = Clock()
    assembler, completed = make(store, clock)
    for i in range(3):
        assembler.instance_recorded(store.record_instance(ref(f"9.{i}"), clock()), 1)
    clock.now += 4.9
    assert assembler.sweep() == []
    clock.now += 0.2
    assert assembler.sweep() == [SeriesKey("1.2.3", 1)]
    assert assembler.sweep() == []
    assert completed == [(SeriesKey("1.2.3", 1), CompletionReason.QUIET)]
    (summary,) = store.list_series()
    assert (summary.state, summary.instance_count) == ("complete", 3)


def test_a_slide_is_not_cut_between_levels_while_its_sender_is_still_sending(
        store: JobStore) -> None:
    """A whole slide's next level may take minutes to arrive: the quiet rule waits for the
    association that sends it; a CT beside it completes as usual."""
    clock = Clock()
    assembler, completed = make(store, clock)
    slide = InstanceRef("8.1", "1.2.840.10008.5.1.4.1.1.77.1.6", "4.5.6", "1.2",
                        "1.2.840.10008.1.2", "SM", "/spool/8.1.dcm", 10, "MOD", "AINODE", None)
    assembler.instance_recorded(store.record_instance(slide, clock()), 3)
    assembler.instance_recorded(store.record_instance(ref("9.1"), clock()), 4)
    clock.now += 60
    assert assembler.sweep() == [SeriesKey("1.2.3", 1)]  # the CT: quiet
    assembler.association_ended(3, released=True)
    assert assembler.sweep() == [SeriesKey("4.5.6", 1)]  # the slide, once its sender is done
    assert [reason for _, reason in completed] == [CompletionReason.QUIET] * 2


def test_expected_count_completes_early(store: JobStore) -> None:
    clock = Clock()
    assembler, completed = make(store, clock)
    assembler.instance_recorded(store.record_instance(ref("9.1", expected=2), clock()), 1)
    assert completed == []
    assembler.instance_recorded(store.record_instance(ref("9.2", expected=2), clock()), 1)
    assert completed == [(SeriesKey("1.2.3", 1), CompletionReason.EXPECTED_COUNT)]


def test_release_completes_only_when_enabled(store: JobStore) -> None:
    clock = Clock()
    assembler, completed = make(store, clock)
    assembler.instance_recorded(store.record_instance(ref("9.1"), clock()), 7)
    assembler.association_ended(7, released=True)
    assert completed == []
    assembler, completed = make(store, clock, complete_on_release=True)
    assembler.instance_recorded(store.record_instance(ref("9.2"), clock()), 8)
    assembler.association_ended(8, released=False)  # aborted: not complete
    assert completed == []
    assembler.instance_recorded(store.record_instance(ref("9.3"), clock()), 9)
    assembler.association_ended(9, released=True)
    assert completed == [(SeriesKey("1.2.3", 1), CompletionReason.RELEASE)]


def test_late_instance_opens_new_revision_and_duplicates_count(store: JobStore) -> None:
    clock = Clock()
    assembler, _ = make(store, clock)
    first = store.record_instance(ref("9.1"), clock())
    again = store.record_instance(ref("9.1"), clock())
    assert (first.duplicate, again.duplicate, again.instance_count) == (False, True, 1)
    clock.now += 10
    assembler.sweep()
    late = store.record_instance(ref("9.2"), clock())
    assert late.series == SeriesKey("1.2.3", 2)
    resent = store.record_instance(ref("9.1"), clock())
    assert resent.duplicate and resent.instance_count == 2
    rows = [(s.revision, s.state, s.instance_count, s.duplicate_count)
            for s in sorted(store.list_series(), key=lambda s: s.revision)]
    assert rows == [(1, "complete", 1, 1), (2, "receiving", 2, 1)]
    assert store.totals() == {"instances": 2, "series_receiving": 1, "series_complete": 1,
                              "duplicates": 2}


def test_release_waits_for_every_association_sending_the_series(
    new_store: Callable[[], JobStore],
) -> None:
    """One series split between two receivers (two processes on one store): the first
    association's release does not complete it while the other still sends; the last does."""
    store_a = new_store()
    b_store = store_a  # each assembler names its associations; one store holds both
    clock = Clock()
    a, completed = make(store_a, clock, complete_on_release=True)
    b, completed_b = make(b_store, clock, complete_on_release=True)
    a.instance_recorded(store_a.record_instance(ref("1"), clock.now), association_id=1)
    b.instance_recorded(b_store.record_instance(ref("2"), clock.now), association_id=2)
    a.association_ended(1, released=True)
    assert completed == []
    b.instance_recorded(b_store.record_instance(ref("3"), clock.now), association_id=2)
    b.association_ended(2, released=True)
    assert completed_b == [(SeriesKey("1.2.3", 1), CompletionReason.RELEASE)]
    assert store_a.totals()["series_complete"] == 1
    assert store_a.list_series()[0].instance_count == 3


def test_a_quiet_series_is_not_completed_if_an_instance_arrived_meanwhile(
    store: JobStore,
) -> None:
    """Another receiver may record an instance between the sweep's query and its update."""
    key = store.record_instance(ref("1"), now=100).series
    store.record_instance(ref("2"), now=106)  # after the sweep looked at last_at=100
    assert not store.complete_series(key, CompletionReason.QUIET, now=106, received_before=105)
    assert store.complete_series(key, CompletionReason.QUIET, now=112, received_before=111)

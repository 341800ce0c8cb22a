"""Series completeness: quiet period, expected instance count, association release.

A series revision is complete at the first of: ``quiet_seconds`` without a new instance; its
expected count (0020,1209) reached; the sending association released (when enabled). A whole
slide (PS3.3 A.32.8) is one series whose levels can each take minutes to arrive (a 4 GB level):
the quiet rule does not complete it while an association that sent part of it is still open
on this receiver, so the pyramid is not cut between levels. Each is
decided in the job store, so instances of one series that reach different receivers (several
processes or nodes on one store) still form one series: a quiet revision is completed only if
no instance arrived meanwhile, and a release completes it only when no association on any
receiver is still sending it. The clock is injected so tests control time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from node.domain import CompletionReason, SeriesKey, StoreOutcome
from node.runtime import metrics
from node.store.jobs import JobStore

log = logging.getLogger(__name__)

CompletionListener = Callable[[SeriesKey, CompletionReason], None]


@dataclass(frozen=True, slots=True)
class CompletionPolicy:
    quiet_seconds: float
    complete_on_release: bool = False
    use_expected_count: bool = True


class SeriesAssembler:
    """Decides when series revisions are complete and records it in the job store."""

    def __init__(
        self,
        store: JobStore,
        policy: CompletionPolicy,
        clock: Callable[[], float],
        on_complete: CompletionListener | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._on_complete = on_complete
        self._by_association: dict[int, set[SeriesKey]] = {}
        self._slides_open: dict[int, set[SeriesKey]] = {}  # association -> slides it sends
        self._lock = threading.Lock()

    def _association(self, association_id: int) -> str:
        """An association's name, unique among every receiver on the store."""
        return f"{socket.gethostname()}:{os.getpid()}:{association_id}"

    def instance_recorded(self, outcome: StoreOutcome, association_id: int) -> None:
        with self._lock:
            keys = self._by_association.setdefault(association_id, set())
            joined = outcome.series not in keys
            keys.add(outcome.series)
            if outcome.whole_slide:
                self._slides_open.setdefault(association_id, set()).add(outcome.series)
        if joined and self._policy.complete_on_release:
            self._store.sender_joined(outcome.series, self._association(association_id))
        expected = outcome.expected_count
        if self._policy.use_expected_count and expected and outcome.instance_count >= expected:
            self._complete(outcome.series, CompletionReason.EXPECTED_COUNT)

    def association_ended(self, association_id: int, *, released: bool) -> None:
        """An association closed; on a normal release its series may be complete."""
        with self._lock:
            keys = self._by_association.pop(association_id, set())
            self._slides_open.pop(association_id, None)
        if not self._policy.complete_on_release:
            return
        name = self._association(association_id)
        for key in sorted(keys, key=lambda k: (k.series_instance_uid, k.revision)):
            if released:
                if self._store.sender_released(key, name, self._clock()):
                    self._completed(key, CompletionReason.RELEASE)
            else:  # aborted: this sender is gone; quiet (or another release) completes it
                self._store.sender_left(key, name)

    def sweep(self) -> list[SeriesKey]:
        """Complete every revision quiet for ``quiet_seconds``; returns those completed now."""
        cutoff = self._clock() - self._policy.quiet_seconds
        with self._lock:
            still_sending = set().union(*self._slides_open.values())
        return [
            key
            for key in self._store.quiet_series(cutoff)
            if key not in still_sending
            and self._complete(key, CompletionReason.QUIET, received_before=cutoff)
        ]

    def _complete(
        self, key: SeriesKey, reason: CompletionReason, received_before: float | None = None
    ) -> bool:
        if not self._store.complete_series(key, reason, self._clock(), received_before):
            return False
        self._completed(key, reason)
        return True

    def _completed(self, key: SeriesKey, reason: CompletionReason) -> None:
        log.info("series complete (%s): %s rev %d", reason, key.series_instance_uid, key.revision)
        metrics.SERIES_COMPLETED.labels(str(reason)).inc()
        if self._on_complete is not None:
            self._on_complete(key, reason)

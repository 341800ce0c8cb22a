"""Writes the rejection notes of withdrawn results (IHE IOCM) into the outbox: for each
recorded withdrawal, one Key Object Selection note per destination that received the
objects and acts on rejection notes (``peers[].iocm``), beside the objects it rejects. A
superseded result's note waits in the outbox until the new results have reached that
destination. A withdrawal whose note cannot be written ends ``failed`` with its reason
(withdrawing it again retries); the others go on."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset, dcmread

from node.settings import Settings
from node.store.durable import write_atomically
from node.store.jobs import JobStore
from node.store.outbox import ResultToSend
from node.store.rejections import Delivered, Rejection, Rejections
from node.store.spool import path_component

log = logging.getLogger(__name__)
NOTE_KIND = "kos"


def _save(dataset: Dataset, handle: BinaryIO) -> None:
    dataset.save_as(handle, enforce_file_format=True)


class RejectionNotes:
    def __init__(self, store: JobStore, current: Callable[[], Settings],
                 clock: Callable[[], float] = time.time) -> None:
        self._rejections = Rejections(store)
        self._current = current
        self._clock = clock

    def write_pending(self) -> int:
        """Notes for every pending withdrawal; returns how many were queued."""
        queued = 0
        for rejection in self._rejections.pending():
            try:
                queued += self._write(rejection)
            except Exception as exc:  # this withdrawal ends failed; the others go on
                log.exception("job %d: rejection note not written", rejection.job_id)
                self._rejections.failed(rejection.job_id, f"not written: {exc}", self._clock())
        return queued

    def _write(self, rejection: Rejection) -> int:
        from node.encode.rejection import rejection_note  # highdicom: on first use only

        settings = self._current()
        by_destination: dict[str, list[Delivered]] = {}
        for item in self._rejections.delivered(rejection.job_id):
            by_destination.setdefault(item.destination, []).append(item)
        notes: list[ResultToSend] = []
        skipped: list[str] = []
        for destination, items in sorted(by_destination.items()):
            peer = settings.peer_by_name(destination)
            if peer is None or not peer.iocm:
                skipped.append(destination)
                continue
            headers = [dcmread(i.path, stop_before_pixels=True) for i in items]
            note = rejection_note(headers, rejection.reason, destination,
                                  settings.node.ae_title, _description(rejection))
            path = Path(items[0].path).parent / f"rejection-{path_component(destination)}.dcm"
            write_atomically(path, functools.partial(_save, note))
            notes.append(ResultToSend(destination, str(path), str(note.SOPInstanceUID),
                                      NOTE_KIND, 10 if rejection.reason == "safety" else 0))
        parts = [f"note for {', '.join(n.destination for n in notes)}"] if notes else []
        if skipped:
            parts.append(f"not told (iocm off, or no such peer): {', '.join(skipped)}")
        detail = "; ".join(parts) or "nothing had been delivered"
        if not self._rejections.queue(rejection.job_id, notes, rejection.replaced_by, detail,
                                      self._clock()):
            return 0  # another sender on the store wrote and queued them first
        log.info("job %d: results withdrawn (%s): %s", rejection.job_id, rejection.reason,
                 detail)
        return len(notes)


def _description(rejection: Rejection) -> str:
    if rejection.replaced_by is not None:
        return f"AI result superseded by the results of job {rejection.replaced_by}"
    return f"AI result withdrawn: {rejection.comment}"

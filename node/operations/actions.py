"""What an operator can do, in one place: the CLI, the admin API and the dashboard call these
and nothing else, so an action means the same from each. Every action changes the job store
(or fetches, or exports) and records who did it, and from where, in the audit trail.

A refused action raises :class:`ActionRefused` with the HTTP status that says why (404:
nothing there; 409: not in a state the action applies to; 502: a peer failed); the CLI turns
it into an exit status, the API into that status, the dashboard into a flash message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.audit.trail import MINOR_FAILURE
from node.domain import AuditEvent, CompletionReason, JobState, SeriesKey, SeriesState
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.outbox import Outbox
from node.store.queue import JobQueue
from node.store.spool import well_formed_uid

if TYPE_CHECKING:  # imported where used: pynetdicom and the de-identifier load on demand
    from node.ingest.intake import Intake
    from node.ingest.retrieve import Retrieved
    from node.research.export import ExportReport

REQUEUABLE_JOBS = (JobState.FAILED, JobState.CANCELLED)


def _require_uid(uid: str) -> None:
    """A study UID from outside goes into URLs and identifiers only when well formed."""
    if not well_formed_uid(uid):
        raise ActionRefused(422, "not a Study Instance UID (PS3.5 9.1: digits and dots, at "
                                 "most 64 characters)")


class ActionRefused(Exception):
    """The action does not apply (HTTP ``status``: 404 nothing there, 409 wrong state, 502 a
    peer failed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Operator:
    """Who acts: an OS account (CLI), a token holder (API), a signed-in user (dashboard),
    and the network address they came from."""

    name: str
    address: str = ""


class Actions:
    def __init__(self, store: JobStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def _audit(self, who: Operator, event: AuditEvent, detail: str, *,
               objects: list[tuple[str, str]] | None = None, outcome: int = 0) -> None:
        self._store.audit(who.name, event, detail, self._clock(), address=who.address,
                          objects=objects or (), outcome=outcome)

    # -- jobs --------------------------------------------------------------------------
    def requeue_jobs(self, job_ids: list[int] | None, who: Operator) -> list[int]:
        """Queue failed or cancelled jobs again with fresh attempts (``None``: every failed
        one; a cancelled job goes again only when named). Returns those queued."""
        states = (JobState.FAILED,) if job_ids is None else REQUEUABLE_JOBS
        done = JobQueue(self._store).requeue(job_ids, self._clock(), states)
        if done:
            self._audit(who, AuditEvent.JOBS_REQUEUED, ", ".join(map(str, done)))
        return done

    def requeue_job(self, job_id: int, who: Operator) -> None:
        if not self.requeue_jobs([job_id], who):
            raise ActionRefused(409, f"job {job_id} is unknown, or not failed or cancelled")

    def cancel_job(self, job_id: int, who: Operator) -> None:
        """Cancel a queued or running job."""
        if not JobQueue(self._store).cancel(job_id, f"cancelled by {who.name}", self._clock()):
            raise ActionRefused(409, f"job {job_id} is unknown, or has ended")
        self._audit(who, AuditEvent.JOB_CANCELLED, str(job_id))

    # -- results -----------------------------------------------------------------------
    def requeue_results(self, item_ids: list[int] | None, who: Operator) -> list[int]:
        """Send results again now: dead letters queued again and, when named, queued ones
        waiting out their backoff made ready (``None``: every dead letter)."""
        outbox = Outbox(self._store)
        now = self._clock()
        done = outbox.requeue(item_ids, now)
        if item_ids is not None:
            done += outbox.retry_now(sorted(set(item_ids) - set(done)), now)
        if done:
            self._audit(who, AuditEvent.RESULTS_REQUEUED, ", ".join(map(str, sorted(done))))
        return sorted(done)

    def withdraw_result(self, job_id: int, reason: str, who: Operator) -> None:
        """Withdraw a job's results from the PACS as wrong: every destination that received
        them and acts on IHE IOCM rejection notes gets one, (113037, DCM, "Rejected for
        Patient Safety Reasons"); results not sent yet are not sent. Once per job."""
        from node.store.rejections import SAFETY, Rejections

        reason = " ".join(reason.split())
        if not reason or len(reason) > 500:
            raise ActionRefused(422, "say why the result is withdrawn (1 to 500 characters)")
        now = self._clock()
        outcome = Rejections(self._store).withdraw(
            job_id, SAFETY, reason, who.name, now, lambda db: self._store.audit(
                who.name, AuditEvent.RESULT_WITHDRAWN, f"job {job_id}: rejected for patient"
                " safety reasons", now, db, address=who.address))
        if outcome == "unknown":
            raise ActionRefused(404, f"job {job_id} is unknown or has no results")
        if outcome == "already":
            raise ActionRefused(409, f"the results of job {job_id} are withdrawn already")

    def assess_result(self, job_id: int, verdict: str, reason: str, who: Operator,
                      source: str = "operator") -> None:
        """The radiologist's verdict on a job's results: ``accept``, ``reject`` or ``modify``
        (IHE AIRAI's three), with an optional reason; a later verdict replaces an earlier one
        in the acceptance rate."""
        from node.store.verdicts import VERDICTS, Verdicts

        reason = " ".join(reason.split())
        if verdict not in VERDICTS:
            raise ActionRefused(422, f"a verdict is one of {', '.join(VERDICTS)}")
        if len(reason) > 500:
            raise ActionRefused(422, "a reason has at most 500 characters")
        now = self._clock()
        if not Verdicts(self._store).record(job_id, verdict, reason, who.name, source, now):
            raise ActionRefused(404, f"job {job_id} is unknown or has no results")
        self._audit(who, AuditEvent.RESULT_ASSESSED, f"job {job_id}: {verdict}")

    def requeue_result(self, item_id: int, who: Operator) -> None:
        if not self.requeue_results([item_id], who):
            raise ActionRefused(409, f"result {item_id} is unknown, sent, or already being sent")

    def retry_destination(self, destination: str, who: Operator) -> dict[str, list[int]]:
        """Everything waiting for ``destination`` goes now: its dead letters queued again, its
        queued results' backoff cut short (e.g. the PACS is back after an outage)."""
        outbox = Outbox(self._store)
        now = self._clock()
        requeued = outbox.requeue(outbox.dead_ids(destination), now)
        waiting = outbox.retry_now(None, now, destination=destination)
        if not requeued and not waiting:
            raise ActionRefused(409, f"nothing waits for {destination}")
        self._audit(who, AuditEvent.RESULTS_REQUEUED,
                    f"{destination}: {len(requeued)} dead letter(s) and {len(waiting)} "
                    "waiting now")
        return {"requeued": requeued, "now": waiting}

    # -- series and studies ------------------------------------------------------------
    def complete_series(self, series_uid: str, who: Operator) -> int:
        """Complete the receiving revision of a series now; returns the revision."""
        revision = self._store.newest_revision(series_uid, SeriesState.RECEIVING)
        if revision is None:
            raise ActionRefused(404, "no series with that UID is receiving")
        key = SeriesKey(series_uid, revision)
        if not self._store.complete_series(key, CompletionReason.OPERATOR, self._clock()):
            raise ActionRefused(409, "the series completed meanwhile")
        self._audit(who, AuditEvent.SERIES_COMPLETED,
                    f"series {series_uid} revision {key.revision}")
        return key.revision

    def retrieve_study(self, settings: Settings, intake: Intake, source: str, study_uid: str,
                       who: Operator, on_instance: Callable[[], None] | None = None
                       ) -> Retrieved:
        """Retrieve a study from the peer ``source`` (C-GET, C-MOVE or WADO-RS, by its
        ``retrieve``) through ``intake``: routed as if it had been pushed."""
        from node.ingest.retrieve import RetrieveFailed, Retriever

        _require_uid(study_uid)
        peer = settings.peer_by_name(source)
        if peer is None:
            raise ActionRefused(404, f"no peer named {source!r}")
        try:
            result = Retriever(settings, intake, on_instance=on_instance).study(peer, study_uid)
        except RetrieveFailed as exc:
            self._audit(who, AuditEvent.STUDY_RETRIEVE_FAILED, f"from {peer.name}: {exc}",
                        objects=[("study", study_uid)], outcome=MINOR_FAILURE)
            raise ActionRefused(502, str(exc)) from exc
        self._audit(who, AuditEvent.STUDY_RETRIEVED,
                    f"from {peer.name} by {result.method}: {result.stored} instance(s)",
                    objects=[("study", study_uid)])
        return result

    def export_studies(self, settings: Settings, to: str, study_uids: list[str],
                       profile: str | None, who: Operator,
                       on_progress: Callable[[str], None] | None = None) -> ExportReport:
        """De-identify studies the node keeps to the research entry ``to`` (audited by the
        exporter with ``who``); 404 no such entry, 409 it cannot start, 502 the research peer
        did not take the files."""
        from node.research.export import DestinationFailed, Exporter, ExportError

        for study_uid in study_uids:
            _require_uid(study_uid)
        if settings.research_destination(to) is None:
            raise ActionRefused(404, f"no research entry named {to!r}")
        try:
            return Exporter(settings, self._store, self._clock).export(
                to, study_uids, profile, actor=who.name, address=who.address,
                on_progress=on_progress)
        except ExportError as exc:
            raise ActionRefused(409, str(exc)) from exc
        except DestinationFailed as exc:
            raise ActionRefused(502, str(exc)) from exc

"""What an operator can do, shared by the admin API and the dashboard: each action changes
the job store and records who did it (and from where) in the audit trail."""

from __future__ import annotations

from node.domain import CompletionReason, JobState, SeriesKey, SeriesState
from node.store.outbox import Outbox
from node.store.queue import JobQueue
from node.web.context import WebContext


class ActionRefused(Exception):
    """The action does not apply (HTTP ``status``: 404 nothing there, 409 wrong state)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _audit(context: WebContext, who: tuple[str, str], action: str, detail: str) -> None:
    context.store.audit(who[0], action, detail, context.clock(), address=who[1])


def retry_job(context: WebContext, job_id: int, who: tuple[str, str]) -> None:
    """Queue a failed or cancelled job again with fresh attempts."""
    if not JobQueue(context.store).requeue([job_id], context.clock(),
                                           (JobState.FAILED, JobState.CANCELLED)):
        raise ActionRefused(409, f"job {job_id} is unknown, or not failed or cancelled")
    _audit(context, who, "requeue jobs", str(job_id))


def cancel_job(context: WebContext, job_id: int, who: tuple[str, str]) -> None:
    """Cancel a queued or running job."""
    if not JobQueue(context.store).cancel(job_id, f"cancelled by {who[0]}", context.clock()):
        raise ActionRefused(409, f"job {job_id} is unknown, or has ended")
    _audit(context, who, "job cancelled", str(job_id))


def requeue_result(context: WebContext, item_id: int, who: tuple[str, str]) -> None:
    """Send a result again now: a dead letter queued again, or a queued one waiting out its
    backoff made ready."""
    outbox = Outbox(context.store)
    now = context.clock()
    if not outbox.requeue([item_id], now) and not outbox.retry_now([item_id], now):
        raise ActionRefused(409, f"result {item_id} is unknown, sent, or already being sent")
    _audit(context, who, "requeue results", str(item_id))


def retry_destination(context: WebContext, destination: str, who: tuple[str, str]
                      ) -> dict[str, list[int]]:
    """Everything waiting for ``destination`` goes now: its dead letters queued again, its
    queued results' backoff cut short (e.g. the PACS is back after an outage)."""
    outbox = Outbox(context.store)
    now = context.clock()
    requeued = outbox.requeue(outbox.dead_ids(destination), now)
    waiting = outbox.retry_now(None, now, destination=destination)
    if not requeued and not waiting:
        raise ActionRefused(409, f"nothing waits for {destination}")
    _audit(context, who, "requeue results",
           f"{destination}: {len(requeued)} dead letter(s) and {len(waiting)} waiting now")
    return {"requeued": requeued, "now": waiting}


def complete_series(context: WebContext, series_uid: str, who: tuple[str, str]) -> int:
    """Complete the receiving revision of a series now; returns the revision."""
    rows = context.store.query(
        "SELECT revision FROM series WHERE series_uid=? AND state=? ORDER BY revision DESC",
        series_uid, SeriesState.RECEIVING.value)
    if not rows:
        raise ActionRefused(404, "no series with that UID is receiving")
    key = SeriesKey(series_uid, int(str(rows[0][0])))
    if not context.store.complete_series(key, CompletionReason.OPERATOR, context.clock()):
        raise ActionRefused(409, "the series completed meanwhile")
    _audit(context, who, "series completed", f"series {series_uid} revision {key.revision}")
    return key.revision

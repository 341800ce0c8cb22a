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
    """Queue a dead letter again for delivery."""
    if not Outbox(context.store).requeue([item_id], context.clock()):
        raise ActionRefused(409, f"result {item_id} is unknown, or not a dead letter")
    _audit(context, who, "requeue results", str(item_id))


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

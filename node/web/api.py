"""The admin API under ``/api/``: series, jobs, results (the outbox), models, pipelines, the
audit trail and an overview. Every change is recorded in the audit trail with the caller's
address."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from node.domain import JobState, SeriesState
from node.jobs.drift import drift
from node.jobs.shadow import summarise
from node.operations import readiness
from node.operations.actions import ActionRefused, Actions, Operator
from node.store.outbox import Outbox
from node.store.queue import JobQueue
from node.store.shadow import ShadowComparisons
from node.store.verdicts import Verdicts
from node.web.auth import actor, require_token
from node.web.context import WebContext

R = TypeVar("R")
router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _act(action: Callable[[Actions, Operator], R], request: Request) -> R:
    """Run an operator action (:mod:`node.operations.actions`) as the caller."""
    try:
        return action(_context(request).actions, Operator(*actor(request)))
    except ActionRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc


# -- overview ------------------------------------------------------------------------------
@router.get("/status", tags=["overview"])
def status(request: Request) -> dict[str, Any]:
    """Counts of series, jobs and results, disk and Triton: what the dashboard's overview
    and ``ainode status`` show."""
    context = _context(request)
    return {
        "totals": context.store.totals(),
        "jobs": JobQueue(context.store).counts(),
        "results": Outbox(context.store).by_destination(),
        "disk_free_bytes": readiness.free_bytes(context.settings),
        "disk_floor_bytes": context.settings.node.min_free_disk_mb * 1024 * 1024,
        "backend": context.settings.inference.backend,
        "triton": (readiness.check_triton(context.settings) or "ready")
        if context.settings.inference.backend == "triton" else None,
    }


# -- series --------------------------------------------------------------------------------
@router.get("/series", tags=["series"])
def list_series(request: Request, state: SeriesState | None = None,
                limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Series newest first, receiving and complete, with how they were routed."""
    rows = _context(request).store.list_series(limit, state)
    return [{
        "series_instance_uid": s.series_instance_uid, "revision": s.revision,
        "study_instance_uid": s.study_instance_uid, "modality": s.modality,
        "calling_ae": s.calling_ae, "state": s.state.value, "instances": s.instance_count,
        "duplicates": s.duplicate_count, "expected": s.expected_count,
        "first_received_at": s.first_received_at, "last_received_at": s.last_received_at,
        "completed_at": s.completed_at, "completion_reason": s.completion_reason,
        "route_state": s.route_state, "route_detail": s.route_detail,
    } for s in rows]


@router.post("/series/{series_uid:path}/complete", tags=["series"])
def complete_series(request: Request, series_uid: str) -> dict[str, Any]:
    """Complete a series still receiving now, without waiting for its quiet period (it is
    routed at once)."""
    revision = _act(lambda a, who: a.complete_series(series_uid, who), request)
    return {"series_instance_uid": series_uid, "revision": revision, "state": "complete"}


# -- jobs ----------------------------------------------------------------------------------
def _job(summary: Any) -> dict[str, Any]:
    result = summary.result or {}
    return {
        "id": summary.id, "series_instance_uid": summary.series_instance_uid,
        "revision": summary.revision, "pipeline": summary.pipeline, "model": summary.model,
        "state": summary.state.value, "attempts": summary.attempts, "error": summary.error,
        "updated_at": summary.updated_at, "superseded_by": summary.superseded_by,
        "seconds": result.get("seconds", {}), "urgent": result.get("urgent"),
        "outputs": result.get("outputs", {}), "model_version": result.get("model_version"),
    }


@router.get("/jobs", tags=["jobs"])
def list_jobs(request: Request, state: JobState | None = None, pipeline: str | None = None,
              limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Jobs newest first with per-stage seconds; filter by state and pipeline."""
    return [_job(j) for j in JobQueue(_context(request).store).jobs(limit, state, pipeline)]


@router.post("/jobs/{job_id}/retry", tags=["jobs"])
def retry_job(request: Request, job_id: int) -> dict[str, Any]:
    """Queue a failed or cancelled job again with fresh attempts."""
    _act(lambda a, who: a.requeue_job(job_id, who), request)
    return {"id": job_id, "state": "queued"}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(request: Request, job_id: int) -> dict[str, Any]:
    """Cancel a queued or running job (retry queues it again)."""
    _act(lambda a, who: a.cancel_job(job_id, who), request)
    return {"id": job_id, "state": "cancelled"}


class WithdrawRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="why (kept, never logged)")


@router.post("/jobs/{job_id}/withdraw", tags=["results"])
def withdraw_results(request: Request, job_id: int, body: WithdrawRequest) -> dict[str, Any]:
    """Withdraw a job's results as wrong (IHE IOCM): every destination that received them and
    has ``iocm: true`` gets a rejection note, "Rejected for Patient Safety Reasons"; results
    not sent yet are not sent. 404: no finished job; 409: withdrawn already."""
    _act(lambda a, who: a.withdraw_result(job_id, body.reason, who), request)
    return {"id": job_id, "withdrawn": True}


@router.get("/shadow", tags=["results"])
def shadow_runs(request: Request, pipeline: str | None = None,
                limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
    """Shadow pipelines compared with their live pipelines: a summary per shadow pipeline
    (series compared, median Dice per label, agreement rate per label or finding) and the
    comparisons, oldest first."""
    comparisons = ShadowComparisons(_context(request).store).listing(pipeline, limit)
    return {"summary": summarise(comparisons),
            "comparisons": [{"series_instance_uid": c.series_uid, "revision": c.revision,
                             "pipeline": c.pipeline, "live_pipeline": c.live_pipeline,
                             "live_job": c.live_job, "shadow_job": c.shadow_job,
                             "at": c.created_at, **c.comparison} for c in comparisons]}


class VerdictRequest(BaseModel):
    verdict: Literal["accept", "reject", "modify"]
    reason: str = Field("", max_length=500)


@router.post("/jobs/{job_id}/verdict", tags=["results"])
def assess_results(request: Request, job_id: int, body: VerdictRequest) -> dict[str, Any]:
    """The radiologist's verdict on a job's results (accept, reject, modify; IHE AIRAI's
    assessments), audited; 404: no finished job with results."""
    _act(lambda a, who: a.assess_result(job_id, body.verdict, body.reason, who, "api"),
         request)
    return {"id": job_id, "verdict": body.verdict}


@router.get("/drift", tags=["results"])
def drift_report(request: Request, pipeline: str | None = None) -> list[dict[str, Any]]:
    """Per pipeline: the PSI of each feature (inputs, findings, measures, latency) in the
    recent window against the baseline, the drifted ones, and per-day figures."""
    context = _context(request)
    return [dataclasses.asdict(report)
            for report in drift(context.settings, context.store, time.time(), pipeline)]


@router.get("/verdicts", tags=["results"])
def verdicts(request: Request, limit: int = Query(200, ge=1, le=5000)) -> dict[str, Any]:
    """Acceptance per model and version (by each result's latest verdict) and the verdicts,
    newest first."""
    found = Verdicts(_context(request).store)
    return {
        "acceptance": [{"model": model, "version": version, **values}
                       for (model, version), values in sorted(found.acceptance().items())],
        "verdicts": [{"job": v.job_id, "model": v.model, "version": v.version,
                      "verdict": v.verdict, "reason": v.reason, "by": v.actor,
                      "source": v.source, "at": v.created_at} for v in found.listing(limit)],
    }


# -- results (the outbox) ------------------------------------------------------------------
@router.get("/results", tags=["results"])
def list_results(request: Request, state: str | None = None,
                 limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Result objects for delivery, newest first; ``state=dead`` lists dead letters with
    their reason."""
    items = Outbox(_context(request).store).items(limit, state)
    return [{"id": i, "destination": d, "kind": k, "sop_instance_uid": u, "state": s,
             "attempts": a, "error": e} for i, d, k, u, s, a, e in items]


@router.post("/results/{item_id}/requeue", tags=["results"])
def requeue_result(request: Request, item_id: int) -> dict[str, Any]:
    """Send a result again now: a dead letter is queued again, a queued one waiting out its
    backoff goes at once (409: sent, or unknown)."""
    _act(lambda a, who: a.requeue_result(item_id, who), request)
    return {"id": item_id, "state": "queued"}


@router.post("/destinations/{destination:path}/retry", tags=["results"])
def retry_destination(request: Request, destination: str) -> dict[str, Any]:
    """Retry now everything waiting for a destination (a PACS back after an outage): its
    dead letters queued again and its queued results' backoff cut short (409: nothing
    waits)."""
    done = _act(lambda a, who: a.retry_destination(destination, who), request)
    return {"destination": destination, **done}


# -- models, pipelines, audit --------------------------------------------------------------
@router.get("/models", tags=["models"])
def list_models(request: Request) -> list[dict[str, Any]]:
    """The model repository's models, and whether each can run now (on Triton: loaded and
    ready)."""
    return readiness.models(_context(request).settings)


@router.get("/pipelines", tags=["pipelines"])
def list_pipelines(request: Request) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in _context(request).settings.pipelines]


@router.get("/audit", tags=["audit"])
def audit_trail(request: Request, since: float = 0.0,
                limit: int = Query(200, ge=1, le=5000)) -> list[dict[str, Any]]:
    """Audit lines newest first (``since``: epoch seconds)."""
    return [{"at": line.at, "actor": line.actor, "address": line.address,
             "action": line.action, "outcome": line.outcome, "detail": line.detail}
            for line in _context(request).store.audit_lines(limit, since)]


# -- on demand -----------------------------------------------------------------------------
class RunRequest(BaseModel):
    source: str = Field(alias="from", description="the peer (PACS) to retrieve from")


@router.post("/studies/{study_uid:path}/run", tags=["studies"])
def run_study(request: Request, study_uid: str, body: RunRequest) -> dict[str, Any]:
    """Retrieve a study from a configured PACS (C-GET, C-MOVE to this node, or WADO-RS, by
    the peer's ``retrieve``) and route it as if it had been pushed. Answers when the
    retrieve is over: what was stored and what failed."""
    context = _context(request)
    if context.intake is None:
        raise HTTPException(404, "this node keeps no instances (no intake)")
    intake = context.intake
    result = _act(lambda a, who: a.retrieve_study(context.peers.settings(), intake,
                                                  body.source, study_uid, who), request)
    return {"study_instance_uid": study_uid, "from": body.source, "method": result.method,
            "stored": result.stored, "failed": result.failed, "seconds": result.seconds}


# -- research export -----------------------------------------------------------------------
class ExportRequest(BaseModel):
    to: str = Field(description="the research[] entry")
    profile: str | None = Field(None, description="instead of the entry's profile")


@router.post("/studies/{study_uid:path}/export", tags=["studies"])
def export_study(request: Request, study_uid: str, body: ExportRequest) -> dict[str, Any]:
    """De-identify a study the node keeps (PS3.15 Annex E, keyed pseudonyms) to a research
    destination, as ``ainode export`` does (audited with the caller). 404: no such entry or
    study; 409: the export cannot start (no key); 422: the study was refused (burned-in
    annotation); 502: the research peer did not take it."""
    context = _context(request)
    report = _act(lambda a, who: a.export_studies(context.peers.settings(), body.to,
                                                  [study_uid], body.profile, who), request)
    if study_uid in report.refused:
        raise HTTPException(422, report.refused[study_uid])
    if study_uid in report.failed:
        raise HTTPException(404, report.failed[study_uid])
    return {"study_instance_uid": study_uid, "to": body.to,
            "pseudonym": report.exported.get(study_uid), "files": report.files,
            "failed": report.failed, "left_out": report.left_out}

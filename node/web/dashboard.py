"""The dashboard: server-rendered pages (Jinja2, plain HTML forms, no front-end build) for
a PACS administrator: overview, series, jobs with per-stage timings, failures with retry
buttons, peers with echo and an add / edit form. Actions go through the same code as the
admin API and are audited the same way.

With ``node.http_token`` set, a browser signs in once (``/ui/login``) and gets a session
cookie (HttpOnly, SameSite=Strict; a random id and its HMAC, never the token). Every form
carries the session's CSRF token and every POST is checked for it (403 without), besides the
same-origin check of :mod:`node.web.guard`; forms are parsed by Starlette (python-multipart)
with limits on fields and sizes. Status messages after an action are signed, so a link from
elsewhere cannot show its own text (:mod:`node.web.session`). Every URL built from a name or
UID encodes it as a path segment (the ``segment`` filter).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from node.domain import JobState
from node.jobs.drift import drift
from node.jobs.shadow import summarise
from node.operations import readiness
from node.operations.actions import ActionRefused, Actions, Operator
from node.operations.peers import PeerChangeRefused
from node.runtime.metrics import JOB_STAGES
from node.store import outbox
from node.store.outbox import Outbox
from node.store.queue import JobQueue
from node.store.shadow import ShadowComparisons
from node.web.auth import (
    actor,
    auth_failures,
    client_address,
    is_authorised,
    refuse_if_locked,
    token_matches,
)
from node.web.charts import line_chart
from node.web.context import WebContext
from node.web.peers import echo_result
from node.web.session import (
    CSRF_FIELD,
    csrf_token,
    current_session,
    require_csrf,
    set_session_cookie,
    signed_flash,
    start_session,
    verified_flash,
)

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
MAX_FORM_FIELDS = 20
MAX_FIELD_BYTES = 2048


def segment(value: object) -> str:
    """``value`` as one URL path segment: every reserved character encoded (a UID of
    ``../jobs/1/cancel?`` stays inside its segment)."""
    return quote(str(value), safe="")


templates.env.filters["segment"] = segment


class SignInRequired(Exception):
    """The dashboard needs the token: the browser is sent to the sign-in page."""


async def require_sign_in(request: Request) -> None:
    if not await is_authorised(request):
        raise SignInRequired


router = APIRouter(prefix="/ui", include_in_schema=False,
                   dependencies=[Depends(require_sign_in)])
public = APIRouter(prefix="/ui", include_in_schema=False)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _page(request: Request, template: str, title: str, active: str,
          **values: Any) -> HTMLResponse:
    flash, flash_error = verified_flash(request)
    fresh: str | None = None
    if current_session(request) is None and _context(request).settings.node.http_token is None:
        fresh = start_session(request)  # a session for this browser, whose token forms carry
    response = templates.TemplateResponse(request, template, {
        "title": title, "active": active, "when": _when,
        "ae_title": _context(request).settings.node.ae_title, "flash": flash,
        "flash_error": flash_error, "csrf": csrf_token(request), "csrf_field": CSRF_FIELD,
        **values})
    if fresh is not None:
        set_session_cookie(request, response, fresh)
    response.headers["cache-control"] = "no-store"
    return response


def _back(request: Request, path: str, message: str, error: bool = False) -> RedirectResponse:
    query = {"flash": message, **({"error": "1"} if error else {}),
             "sig": signed_flash(request, message, error)}
    return RedirectResponse(f"{path}?{urlencode(query)}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """The form's fields (URL-encoded or multipart, parsed by Starlette with limits)."""
    async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS,
                            max_part_size=MAX_FIELD_BYTES) as form:
        return {name: str(value).strip() for name, value in form.items()
                if isinstance(value, str)}


async def _checked_form(request: Request) -> dict[str, str]:
    """The form, after checking that it carries the session's CSRF token (403 without)."""
    form = await _form(request)
    require_csrf(request, form.get(CSRF_FIELD, ""))
    return form


# -- sign in -------------------------------------------------------------------------------
@public.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", "Sign in", "")


@public.post("/login")
async def login(request: Request) -> Response:
    """Sign in: the token is checked, never echoed; a wrong one is slowed and audited."""
    if _context(request).settings.node.http_token is None:
        return RedirectResponse("/ui", status_code=303)
    refuse_if_locked(request)
    token = (await _form(request)).get("token", "")
    address = client_address(request)
    if not token_matches(request, token):
        auth_failures(request).failed(address, "/ui/login")
        refused = _page(request, "login.html", "Sign in", "", failed=True)
        refused.status_code = 401
        return refused
    auth_failures(request).succeeded(address)
    response = RedirectResponse("/ui", status_code=303)
    set_session_cookie(request, response, start_session(request))
    return response


# -- pages ---------------------------------------------------------------------------------
@router.get("")
def overview(request: Request) -> HTMLResponse:
    context = _context(request)
    store = context.store
    seen = readiness.overview(context.settings, store, time.time())
    backend_state = ("in-process" if seen.backend != "triton"
                     else "ready" if seen.backend_ready else "not ready")
    results = Outbox(store).by_destination()
    return _page(request, "overview.html", "Overview", "/ui",
                 received_hour=seen.received_hour, received_day=seen.received_day,
                 totals=store.totals(), jobs=JobQueue(store).counts(), results=results,
                 result_states=outbox.STATES,
                 dead=sum(c.get(outbox.DEAD, 0) for c in results.values()),
                 disk_free=readiness.bytes_text(seen.free_bytes),
                 disk_floor=readiness.bytes_text(seen.floor_bytes), disk_low=seen.disk_low,
                 backend=seen.backend, backend_state=backend_state,
                 backend_ok=seen.backend_ready, readiness=seen.checks)


@router.get("/series")
def series_page(request: Request) -> HTMLResponse:
    return _page(request, "series.html", "Series", "/ui/series",
                 series=_context(request).store.list_series(200))


@router.get("/jobs")
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", "Jobs", "/ui/jobs",
                 jobs=JobQueue(_context(request).store).jobs(200), stages=JOB_STAGES)


@router.get("/failures")
def failures_page(request: Request) -> HTMLResponse:
    store = _context(request).store
    failed = JobQueue(store).jobs(500, JobState.FAILED)
    dead = Outbox(store).items(500, outbox.DEAD)
    return _page(request, "failures.html", "Failures", "/ui/failures", failed=failed[:200],
                 dead=dead[:200])


@router.get("/studies")
def studies_page(request: Request) -> HTMLResponse:
    settings = _context(request).peers.settings()
    return _page(request, "studies.html", "Studies", "/ui/studies", peers=settings.peers,
                 research=settings.research)


@router.get("/shadow")
def shadow_page(request: Request, pipeline: str | None = None) -> HTMLResponse:
    comparisons = ShadowComparisons(_context(request).store).listing(pipeline)
    summary = summarise(comparisons)
    charts = {}
    for name in summary:
        dice: dict[str, list[tuple[float, float]]] = {}
        for item in (c for c in comparisons if c.pipeline == name):
            for label, entry in item.comparison.get("labels", {}).items():
                if entry.get("dice") is not None:
                    dice.setdefault(label, []).append((item.created_at, float(entry["dice"])))
        charts[name] = line_chart(dice)
    return _page(request, "shadow.html", "Shadow runs", "/ui/shadow", summary=summary,
                 charts=charts, comparisons=comparisons[::-1][:100])


@router.get("/drift")
def drift_page(request: Request) -> HTMLResponse:
    context = _context(request)
    reports = drift(context.settings, context.store, time.time())
    charts = {}
    for report in reports:
        per_day = list(enumerate(report.days))
        studies = max([day["studies"] for _, day in per_day] or [1])
        latency = max([day.get("median latency.infer_s", 0.0) for _, day in per_day] or [1.0])
        charts[report.pipeline] = [
            ("studies per day", line_chart(
                {"studies": [(i, day["studies"]) for i, day in per_day]}, 0, studies)),
            ("share with a finding present", line_chart(
                {"present": [(i, day["present_rate"]) for i, day in per_day]})),
            ("median inference seconds", line_chart(
                {"inference": [(i, day["median latency.infer_s"]) for i, day in per_day
                               if "median latency.infer_s" in day]}, 0, latency or 1.0)),
        ]
    drift_settings = context.settings.drift
    baseline = (f"{drift_settings.baseline_jobs} jobs" if drift_settings.baseline_jobs
                else f"{drift_settings.baseline_days:g} days")
    return _page(request, "drift.html", "Drift", "/ui/drift", reports=reports, charts=charts,
                 baseline=baseline, window_days=f"{drift_settings.window_days:g}",
                 warning=drift_settings.psi_warning)


@router.get("/peers")
def peers_page(request: Request, edit: str | None = None) -> HTMLResponse:
    entries = _context(request).peers.entries()
    editing = next((e.peer for e in entries if e.peer.name == edit), None)
    return _page(request, "peers.html", "Peers", "/ui/peers", entries=entries, editing=editing)


# -- actions (the admin API's, audited alike) ----------------------------------------------
async def _act(request: Request, action: Callable[[Actions, Operator], object], back: str,
               done: str, checked: bool = False) -> RedirectResponse:
    """Run an operator action (:mod:`node.operations.actions`) as the signed-in user
    (``checked``: the caller has read the form and checked its CSRF token)."""
    if not checked:
        await _checked_form(request)
    who, address = actor(request)
    try:
        await run_in_threadpool(action, _context(request).actions,
                                Operator(f"{who} (dashboard)", address))
    except ActionRefused as exc:
        return _back(request, back, str(exc), error=True)
    return _back(request, back, done)


@router.post("/jobs/{job_id}/retry")
async def retry_job(request: Request, job_id: int) -> RedirectResponse:
    back = "/ui/failures" if "failures" in request.headers.get("referer", "") else "/ui/jobs"
    return await _act(request, lambda a, who: a.requeue_job(job_id, who), back,
                      f"job {job_id} queued again")


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: int) -> RedirectResponse:
    return await _act(request, lambda a, who: a.cancel_job(job_id, who), "/ui/jobs",
                      f"job {job_id} cancelled")


@router.post("/jobs/{job_id}/withdraw")
async def withdraw_results(request: Request, job_id: int) -> RedirectResponse:
    form = await _checked_form(request)
    return await _act(request, lambda a, who: a.withdraw_result(
        job_id, form.get("reason", ""), who), "/ui/jobs",
        f"job {job_id}: results withdrawn", checked=True)


@router.post("/jobs/{job_id}/verdict")
async def assess_results(request: Request, job_id: int) -> RedirectResponse:
    form = await _checked_form(request)
    verdict = form.get("verdict", "")
    return await _act(request, lambda a, who: a.assess_result(
        job_id, verdict, form.get("reason", ""), who, "dashboard"), "/ui/jobs",
        f"job {job_id}: {verdict} recorded", checked=True)


@router.post("/results/{item_id}/requeue")
async def requeue_result(request: Request, item_id: int) -> RedirectResponse:
    return await _act(request, lambda a, who: a.requeue_result(item_id, who),
                      "/ui/failures",
                      f"result {item_id} queued for delivery again")


@router.post("/destinations/{destination:path}/retry")
async def retry_destination(request: Request, destination: str) -> RedirectResponse:
    return await _act(request, lambda a, who: a.retry_destination(destination, who), "/ui",
                      f"results for {destination} go now")


@router.post("/series/{series_uid:path}/complete")
async def complete_series(request: Request, series_uid: str) -> RedirectResponse:
    return await _act(request, lambda a, who: a.complete_series(series_uid, who),
                      "/ui/series",
                      "series completed; it is routed now")


@router.post("/studies/run")
async def run_study(request: Request) -> RedirectResponse:
    form = await _checked_form(request)
    study, source = form.get("study_uid", ""), form.get("from", "")
    context = _context(request)
    intake = context.intake
    if intake is None:
        return _back(request, "/ui/studies", "this node keeps no instances", error=True)
    return await _act(request, lambda a, who: a.retrieve_study(
        context.peers.settings(), intake, source, study, who), "/ui/studies",
        f"study {study} retrieved from {source}; it is routed now", checked=True)


@router.post("/studies/export")
async def export_study(request: Request) -> RedirectResponse:
    form = await _checked_form(request)
    study, to = form.get("study_uid", ""), form.get("to", "")
    context = _context(request)

    def export(actions: Actions, who: Operator) -> None:
        report = actions.export_studies(context.peers.settings(), to, [study],
                                        form.get("profile") or None, who)
        problem = report.refused.get(study) or report.failed.get(study)
        if problem:
            raise ActionRefused(422, f"study {study}: {problem}")

    return await _act(request, export, "/ui/studies", f"study {study} exported to {to}",
                      checked=True)


@router.post("/peers")
async def save_peer(request: Request) -> RedirectResponse:
    form = await _checked_form(request)
    definition: dict[str, Any] = {
        "name": form.get("name", ""), "ae_title": form.get("ae_title", ""),
        "host": form.get("host", ""), "port": form.get("port", ""),
        "tls": form.get("tls") == "on",
        "hosts": [h.strip() for h in form.get("hosts", "").split(",") if h.strip()],
    }
    if form.get("results"):
        definition["results"] = [k.strip() for k in form["results"].split(",") if k.strip()]
    if form.get("dicomweb_url"):
        definition["dicomweb_url"] = form["dicomweb_url"]
    who, address = actor(request)
    try:
        peer, created = await run_in_threadpool(
            _context(request).peers.put, definition, f"{who} (dashboard)", address)
    except PeerChangeRefused as exc:
        return _back(request, "/ui/peers", str(exc), error=True)
    return _back(request, "/ui/peers", f"{'added' if created else 'saved'} {peer.name}: "
                 f"{peer.ae_title}@{peer.host}:{peer.port}")


@router.post("/peers/{name}/echo")
async def echo_peer(request: Request, name: str) -> RedirectResponse:
    await _checked_form(request)
    answer = await run_in_threadpool(echo_result, _context(request), name)
    if answer is None:
        return _back(request, "/ui/peers", f"no peer named {name}", error=True)
    if answer["ok"]:
        return _back(request, "/ui/peers", f"C-ECHO {name}: {answer['status']} in "
                     f"{answer['round_trip_ms']} ms")
    return _back(request, "/ui/peers",
                 f"C-ECHO {name} failed: {answer['error'] or answer['status']}", error=True)

"""The dashboard: server-rendered pages (Jinja2, plain HTML forms, no front-end build) for
a PACS administrator: overview, series, jobs with per-stage timings, failures with retry
buttons, peers with echo and an add / edit form. Actions go through the same code as the
admin API and are audited the same way.

With ``node.http_token`` set, a browser signs in once (``/ui/login``): the token is kept in
an HttpOnly, SameSite=Strict cookie that :func:`node.web.auth.require_token` accepts, so the
forms' POSTs cannot be forged from another site.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from node.domain import JobState
from node.metrics import JOB_STAGES
from node.peers import PeerChangeRefused
from node.store import outbox
from node.store.outbox import Outbox
from node.store.queue import JobQueue
from node.web import actions, readiness
from node.web.actions import ActionRefused
from node.web.auth import TOKEN_COOKIE, actor, is_authorised
from node.web.context import WebContext
from node.web.peers import echo_result

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


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
    flash = request.query_params.get("flash")
    return templates.TemplateResponse(request, template, {
        "title": title, "active": active, "when": _when,
        "ae_title": _context(request).settings.node.ae_title, "flash": flash,
        "flash_error": request.query_params.get("error") == "1", **values})


def _back(path: str, message: str, error: bool = False) -> RedirectResponse:
    return RedirectResponse(f"{path}?flash={quote(message)}{'&error=1' if error else ''}",
                            status_code=303)


async def _form(request: Request) -> dict[str, str]:
    fields = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True)
    return {name: values[-1].strip() for name, values in fields.items()}


# -- sign in -------------------------------------------------------------------------------
@public.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", "Sign in", "")


@public.post("/login")
async def login(request: Request) -> Response:
    token = (await _form(request)).get("token", "")
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
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


@router.get("/peers")
def peers_page(request: Request, edit: str | None = None) -> HTMLResponse:
    entries = _context(request).peers.entries()
    editing = next((e.peer for e in entries if e.peer.name == edit), None)
    return _page(request, "peers.html", "Peers", "/ui/peers", entries=entries, editing=editing)


# -- actions (the admin API's, audited alike) ----------------------------------------------
def _act(request: Request, action: Callable[[WebContext, Any, tuple[str, str]], Any],
         subject: object, back: str, done: str) -> RedirectResponse:
    who, address = actor(request)
    try:
        action(_context(request), subject, (f"{who} (dashboard)", address))
    except ActionRefused as exc:
        return _back(back, str(exc), error=True)
    return _back(back, done)


@router.post("/jobs/{job_id}/retry")
def retry_job(request: Request, job_id: int) -> RedirectResponse:
    back = "/ui/failures" if "failures" in request.headers.get("referer", "") else "/ui/jobs"
    return _act(request, actions.retry_job, job_id, back, f"job {job_id} queued again")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: int) -> RedirectResponse:
    return _act(request, actions.cancel_job, job_id, "/ui/jobs", f"job {job_id} cancelled")


@router.post("/results/{item_id}/requeue")
def requeue_result(request: Request, item_id: int) -> RedirectResponse:
    return _act(request, actions.requeue_result, item_id, "/ui/failures",
                f"result {item_id} queued for delivery again")


@router.post("/series/{series_uid}/complete")
def complete_series(request: Request, series_uid: str) -> RedirectResponse:
    return _act(request, actions.complete_series, series_uid, "/ui/series",
                "series completed; it is routed now")


@router.post("/peers")
async def save_peer(request: Request) -> RedirectResponse:
    form = await _form(request)
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
        peer, created = _context(request).peers.put(definition, f"{who} (dashboard)", address)
    except PeerChangeRefused as exc:
        return _back("/ui/peers", str(exc), error=True)
    return _back("/ui/peers", f"{'added' if created else 'saved'} {peer.name}: "
                 f"{peer.ae_title}@{peer.host}:{peer.port}")


@router.post("/peers/{name}/echo")
def echo_peer(request: Request, name: str) -> RedirectResponse:
    answer = echo_result(_context(request), name)
    if answer is None:
        return _back("/ui/peers", f"no peer named {name}", error=True)
    if answer["ok"]:
        return _back("/ui/peers", f"C-ECHO {name}: {answer['status']} in "
                     f"{answer['round_trip_ms']} ms")
    return _back("/ui/peers", f"C-ECHO {name} failed: {answer['error'] or answer['status']}",
                 error=True)

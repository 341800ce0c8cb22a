"""``/healthz`` (the process answers) and ``/readyz`` (it can take and process work), both
without authentication, for load balancers, Kubernetes probes and the container health check."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from node.jobs.drift import drift_polled
from node.operations import readiness
from node.web.context import WebContext

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: the failed checks"}})
def readyz(request: Request) -> JSONResponse:
    """Job store reachable, spool writable, disk above ``node.min_free_disk_mb``, Triton ready
    (when it is the backend). 503 names each check that failed. ``warnings``: what does not
    stop the node but needs a person, e.g. a pipeline whose inputs or outputs drifted."""
    context: WebContext = request.app.state.context
    checks = readiness.checks(context.settings, context.store)
    failed = {name: why for name, why in checks.items() if why is not None}
    body: dict[str, object] = {"ready": not failed, "failed": failed, "checked": list(checks)}
    if not failed:
        body["warnings"] = {f"drift {d.pipeline}": "drifted: " + ", ".join(
            f"{name} PSI {d.psi[name]:.2f}" for name in d.drifted)
            for d in drift_polled(context.settings, context.store, time.time()) if d.drifted}
    return JSONResponse(body, status_code=503 if failed else 200)

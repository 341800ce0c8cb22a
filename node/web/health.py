"""``/healthz`` (the process answers) and ``/readyz`` (it can take and process work), both
without authentication, for load balancers, Kubernetes probes and the container health check."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from node.operations import readiness
from node.web.context import WebContext

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: the failed checks"}})
def readyz(request: Request) -> JSONResponse:
    """Job store reachable, spool writable, disk above ``node.min_free_disk_mb``, Triton ready
    (when it is the backend). 503 names each check that failed."""
    context: WebContext = request.app.state.context
    checks = readiness.checks(context.settings, context.store)
    failed = {name: why for name, why in checks.items() if why is not None}
    body = {"ready": not failed, "failed": failed, "checked": list(checks)}
    return JSONResponse(body, status_code=503 if failed else 200)

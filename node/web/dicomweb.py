"""``POST /dicomweb/studies[/{study}]``: STOW-RS in (:mod:`node.ingest.stow`). The body is
streamed to the spool's file system before it is split, so memory stays flat."""

from __future__ import annotations

import itertools
import logging
import os

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.ingest.stow import BadRequest
from node.store.durable import temporary_name
from node.web.auth import require_token
from node.web.context import WebContext

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_token)])
DICOM_JSON = "application/dicom+json"
_requests = itertools.count(1)


async def _store(request: Request, study_uid: str | None) -> JSONResponse:
    context: WebContext = request.app.state.context
    if context.stow is None:
        raise HTTPException(404, "STOW-RS is not served by this node")
    refusal = context.stow.disk_refusal()
    if refusal is not None:  # before a byte of the body is written
        log.warning("STOW-RS request refused (507): %s", refusal.reason)
        return JSONResponse({"error": refusal.reason}, status_code=507)
    body = temporary_name(context.stow.tmp_dir / "stow-request", context.stow.tmp_dir)
    try:
        try:
            with open(body, "wb") as handle:
                async for chunk in request.stream():
                    handle.write(chunk)
        except OSError as exc:  # the disk filled while the body arrived
            log.error("STOW-RS request refused (507): %s", exc.strerror)
            return JSONResponse({"error": f"the request could not be kept ({exc.strerror})"},
                                status_code=507)
        batch = -next(_requests) - os.getpid() * 1_000_000  # never an association's id
        try:
            result = await run_in_threadpool(  # fsync and the job store: off the loop
                context.stow.store, body, request.headers.get("content-type", ""),
                study_uid, batch)
        except BadRequest as exc:
            log.warning("STOW-RS request refused (%d): %s", exc.status, exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
    finally:
        body.unlink(missing_ok=True)
    log.info("STOW-RS from %s: %d stored, %d failed", request.client.host if request.client
             else "?", len(result.stored), len(result.failed))
    base = str(request.base_url).rstrip("/") + "/dicomweb"
    return JSONResponse(result.response(base), status_code=result.http_status,
                        media_type=DICOM_JSON)


@router.post("/studies", responses={202: {"description": "some stored"},
                                    409: {"description": "none stored"}})
async def store_instances(request: Request) -> JSONResponse:
    """Store Instances (PS3.18 10.5): ``multipart/related; type="application/dicom"``."""
    return await _store(request, None)


@router.post("/studies/{study_uid}")
async def store_study_instances(request: Request, study_uid: str) -> JSONResponse:
    """Store Instances of one study; an instance of another study fails with 0xA900."""
    return await _store(request, study_uid)

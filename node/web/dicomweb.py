"""``POST /dicomweb/studies[/{study}]``: STOW-RS in (:mod:`node.ingest.stow`). The body is
split as it arrives, each part written once to the spool's file system, so memory stays flat
and the answer comes when the body ends; one log line per request."""

from __future__ import annotations

import itertools
import logging
import os

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.ingest.stow import BadRequest
from node.web.auth import client_address, require_token
from node.web.context import WebContext

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_token)])
DICOM_JSON = "application/dicom+json"
_requests = itertools.count(1)


FEED_BYTES = 1024 * 1024  # the body is handed to the parser (in a thread) in pieces this big


async def _drain(request: Request) -> None:
    """Read (and drop) what is left of a refused body, so the client, still sending, reads
    the answer instead of a reset connection."""
    try:
        async for _ in request.stream():
            pass
    except Exception:  # the stream was already consumed, or the client went away
        return


async def _store(request: Request, study_uid: str | None) -> JSONResponse:
    context: WebContext = request.app.state.context
    if context.stow is None:
        raise HTTPException(404, "STOW-RS is not served by this node")
    client = client_address(request) or "?"
    refusal = context.stow.disk_refusal()
    if refusal is not None:  # before a byte of the body is written
        await _drain(request)  # read, never written
        log.warning("STOW-RS request from %s refused (507): %s", client, refusal.reason)
        return JSONResponse({"error": refusal.reason}, status_code=507)
    batch = -next(_requests) - os.getpid() * 1_000_000  # never an association's id
    try:
        parts = context.stow.request(request.headers.get("content-type", ""), study_uid, batch)
    except BadRequest as exc:
        await _drain(request)
        log.warning("STOW-RS request from %s refused (%d): %s", client, exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= FEED_BYTES:  # parts are written and kept (fsync, store) off the loop
                await run_in_threadpool(parts.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await run_in_threadpool(parts.write, b"".join(pending))
        result = await run_in_threadpool(parts.finish)
    except BadRequest as exc:
        parts.abandon()
        await _drain(request)
        log.warning("STOW-RS request from %s refused (%d): %s", client, exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    except BaseException:
        parts.abandon()  # the client went away mid-part: its temporary goes
        raise
    failed = ", ".join(f"0x{code:04X}: {count}" for code, count in sorted(parts.refusals.items()))
    (log.warning if failed else log.info)(
        "STOW-RS from %s: %d stored, %d refused%s", client, len(result.stored),
        len(result.failed), f" ({failed}; first: {parts.first_refusal})" if failed else "")
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

"""``/api/peers``: AE titles managed live. Changes are validated like the configuration file
(errors name the key), kept in the job store, audited, and used for new associations,
deliveries and jobs without a restart (:mod:`node.operations.peers`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from node.dicom.scu import PeerUnavailable, echo
from node.operations.peers import PeerChangeRefused, PeerDirectory, peer_fields
from node.web.auth import actor, require_token
from node.web.context import WebContext

router = APIRouter(prefix="/api/peers", tags=["peers"], dependencies=[Depends(require_token)])
PEER_EXAMPLE = {"name": "CT2", "ae_title": "CT2", "host": "10.1.2.3", "port": 104}
PeerBody = Annotated[dict[str, Any], Body(examples=[PEER_EXAMPLE])]


def _peers(request: Request) -> PeerDirectory:
    context: WebContext = request.app.state.context
    return context.peers


def _entry(directory: PeerDirectory, name: str) -> dict[str, Any]:
    for entry in directory.entries():
        if entry.peer.name == name:
            return {**peer_fields(entry.peer), "source": entry.source,
                    "updated_at": entry.updated_at, "updated_by": entry.updated_by}
    raise HTTPException(404, f"no peer named {name!r}")


@router.get("")
def list_peers(request: Request) -> list[dict[str, Any]]:
    """Peers in effect: from the configuration file (``source: file``) or changed live
    (``source: live``). Secrets are never shown, only whether one is set."""
    directory = _peers(request)
    return [_entry(directory, e.peer.name) for e in directory.entries()]


@router.get("/{name}")
def get_peer(request: Request, name: str) -> dict[str, Any]:
    return _entry(_peers(request), name)


def _put(request: Request, definition: dict[str, Any], name: str | None,
         must_be_new: bool) -> JSONResponse:
    directory = _peers(request)
    who, address = actor(request)
    if must_be_new and any(e.peer.name == definition.get("name")
                           for e in directory.entries()):
        raise HTTPException(409, f"peer {definition.get('name')!r} exists: PUT to change it")
    try:
        peer, created = directory.put(definition, who, address, name=name)
    except PeerChangeRefused as exc:
        raise HTTPException(422, str(exc)) from exc
    return JSONResponse(_entry(directory, peer.name), status_code=201 if created else 200)


@router.post("", status_code=201)
def add_peer(request: Request,
             definition: PeerBody) -> JSONResponse:
    """Add a peer (409 if the name exists)."""
    return _put(request, definition, None, must_be_new=True)


@router.put("/{name}")
def put_peer(request: Request, name: str,
             definition: PeerBody) -> JSONResponse:
    """Add or replace the peer ``name`` (201 when new)."""
    return _put(request, definition, name, must_be_new=False)


@router.delete("/{name}")
def remove_peer(request: Request, name: str) -> dict[str, Any]:
    """Remove a peer; refused (409) while a pipeline sends results to it."""
    who, address = actor(request)
    try:
        _peers(request).remove(name, who, address)
    except KeyError:
        raise HTTPException(404, f"no peer named {name!r}") from None
    except PeerChangeRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"name": name, "removed": True}


@router.post("/{name}/reset")
def reset_peer(request: Request, name: str) -> dict[str, Any]:
    """Drop the live change to ``name``: the configuration file's peer applies again."""
    who, address = actor(request)
    if not _peers(request).reset(name, who, address):
        raise HTTPException(404, f"peer {name!r} has no live change")
    return {"name": name, "reset": True}


@router.post("/{name}/echo")
def echo_peer(request: Request, name: str) -> dict[str, Any]:
    """C-ECHO the peer (PS3.7 9.1.5): its DIMSE status and the round-trip time."""
    answer = echo_result(request.app.state.context, name)
    if answer is None:
        raise HTTPException(404, f"no peer named {name!r}")
    return answer


def echo_result(context: WebContext, name: str) -> dict[str, Any] | None:
    """C-ECHO the peer in effect called ``name`` (``None``: there is none)."""
    settings = context.peers.settings()
    peer = settings.peer_by_name(name)
    if peer is None:
        return None
    started = time.perf_counter()
    try:
        status = echo(peer, settings.node.ae_title, timeout_s=10, node_tls=settings.node.tls)
    except PeerUnavailable as exc:
        return {"name": name, "ok": False, "status": None, "error": str(exc),
                "round_trip_ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"name": name, "ok": status == 0, "status": f"0x{status:04X}", "error": None,
            "round_trip_ms": round((time.perf_counter() - started) * 1000, 1)}

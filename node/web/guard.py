"""What every HTTP request passes before a route sees it (pure ASGI middleware):

- **Same origin for changes.** A state-changing request (POST, PUT, PATCH, DELETE) that a
  browser marks as coming from another site (``Sec-Fetch-Site: cross-site`` or
  ``same-site``, or an ``Origin`` other than this server's own) is refused with 403, token or
  no token: a page elsewhere cannot make a signed-in browser, or one on this machine, act on
  the node. Clients that are not browsers (curl, the CLI, a PACS) send neither header.
  Dashboard forms prove more with their session's CSRF token (:mod:`node.web.session`).
- **Bodies capped.** Every body but STOW-RS's (``/dicomweb/``) is at most
  :data:`MAX_BODY_BYTES` (:data:`MAX_SIGN_IN_BYTES` for the sign-in): a larger
  ``Content-Length`` is answered 413 before a byte is read, a chunked body that grows past
  the cap is answered 413 when it does.

The ``Host`` header is checked by Starlette's ``TrustedHostMiddleware`` (:func:`allowed_hosts`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.runtime.logs import printable
from node.settings import NodeSection

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_SIGN_IN_BYTES = 4 * 1024
UNCAPPED_PREFIXES = ("/dicomweb/",)  # STOW-RS: instances of any size, streamed to disk
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def allowed_hosts(node: NodeSection) -> list[str]:
    """Host header values the server answers: loopback, ``http_bind`` and
    ``http_allowed_hosts``; any when it binds every interface and none are given."""
    hosts = [*LOOPBACK_HOSTS, *node.http_allowed_hosts]
    try:
        wildcard = ipaddress.ip_address(node.http_bind.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        return ["*"] if not node.http_allowed_hosts else hosts
    bind = node.http_bind
    return [*hosts, bind, f"[{bind}]" if ":" in bind else bind]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def cross_site(scope: Scope) -> str | None:
    """Why this request comes from another site, or ``None`` when it does not."""
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    host = _header(scope, b"host") or ""
    scheme = scope.get("scheme", "http")
    if origin.lower() != f"{scheme}://{host}".lower():
        return f"Origin {origin}"
    return None


async def _answer(send: Send, status: int, detail: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Same-origin check for changes, and body caps (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if scope.get("method", "GET") not in SAFE_METHODS:
            why = cross_site(scope)
            if why is not None:
                client = scope.get("client") or ("?", 0)
                log.warning("cross-site %s %s refused (403) from %s: %s", scope["method"],
                            printable(path)[:200], printable(client[0]), printable(why)[:200])
                await _answer(send, 403, "cross-site request refused: changes come only from "
                                         "this node's own pages or API clients")
                return
        if path.startswith(UNCAPPED_PREFIXES):
            await self.app(scope, receive, send)
            return
        cap = MAX_SIGN_IN_BYTES if path == "/ui/login" else MAX_BODY_BYTES
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > cap):
            await _answer(send, 413, f"request body over {cap} bytes")
            return
        await self._capped(scope, receive, send, cap)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:  # a route's handler answers it (FastAPI passes it through)
                    raise HTTPException(413, f"request body over {cap} bytes")
            return message

        await self.app(scope, counting_receive, send)


def install(app: Any, node: NodeSection) -> None:
    """Add the guard and the Host check to ``app`` (outermost: Host first)."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app.add_middleware(RequestGuard)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(node),
                       www_redirect=False)

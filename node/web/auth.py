"""Bearer-token authentication (RFC 6750) for everything but the health probes.

With ``node.http_token`` set every other route needs ``Authorization: Bearer <token>`` or a
dashboard session signed in with it (:mod:`node.web.session`); a missing or wrong token gets
401 with ``WWW-Authenticate: Bearer``. Wrong tokens are slowed per client address, logged
once per burst and audited (:mod:`node.web.throttle`). Without a token the server binds only
to loopback (:class:`node.settings.NodeSection` refuses anything else), so only this
machine's users reach it, and :mod:`node.web.guard` refuses changes from other sites.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from node.audit.trail import MINOR_FAILURE
from node.domain import AuditEvent
from node.web.context import WebContext
from node.web.session import session_id
from node.web.throttle import AuthFailures

_bearer = HTTPBearer(auto_error=False, description="node.http_token")


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def auth_failures(request: Request) -> AuthFailures:
    failures: AuthFailures = request.app.state.auth_failures
    return failures


def audited_failures(context: WebContext) -> AuthFailures:
    """The throttle of one web app, auditing each burst in the job store."""
    def on_burst(address: str, where: str) -> None:
        context.store.audit("unknown user", AuditEvent.AUTHENTICATION_FAILED,
                            f"wrong HTTP token at {where} (further failures from this address "
                            "are slowed)", context.clock(), address=address,
                            outcome=MINOR_FAILURE)
    return AuthFailures(on_burst)


def token_matches(request: Request, given: str) -> bool:
    token = request.app.state.context.settings.node.http_token
    return token is not None and hmac.compare_digest(
        given.encode(), token.get_secret_value().encode())


def refuse_if_locked(request: Request) -> None:
    """429 while the client's address is locked out after wrong tokens."""
    wait = auth_failures(request).retry_after(client_address(request))
    if wait > 0:
        raise HTTPException(429, "too many wrong tokens from this address; try again later",
                            headers={"Retry-After": str(int(wait) + 1)})


async def is_authorised(request: Request) -> bool:
    """No token configured, or the request carries it (bearer header), or a dashboard
    session signed in with it."""
    if request.app.state.context.settings.node.http_token is None:
        return True
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    if credentials is not None:
        refuse_if_locked(request)
        if token_matches(request, credentials.credentials):
            return True
        auth_failures(request).failed(client_address(request), request.url.path[:100])
        return False
    return session_id(request) is not None


async def require_token(request: Request) -> None:
    if not await is_authorised(request):
        raise HTTPException(401, "a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})


def actor(request: Request) -> tuple[str, str]:
    """Who made a change, for the audit trail: the API (by token) and the client address."""
    return "admin-api", client_address(request)

"""Bearer-token authentication (RFC 6750) for everything but the health probes.

With ``node.http_token`` set every other route needs ``Authorization: Bearer <token>``; a
missing or wrong token gets 401 with ``WWW-Authenticate: Bearer``. Without a token the server
binds only to loopback (:class:`node.settings.NodeSection` refuses anything else), so only
this machine's users reach it.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="node.http_token")
TOKEN_COOKIE = "ainode_token"  # noqa: S105 - a cookie's name; the dashboard's sign-in (HttpOnly, SameSite=Strict)


async def is_authorised(request: Request) -> bool:
    """No token configured, or the request carries it (bearer header, or the dashboard's
    cookie)."""
    token = request.app.state.context.settings.node.http_token
    if token is None:
        return True
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    given = (credentials.credentials if credentials is not None
             else request.cookies.get(TOKEN_COOKIE, ""))
    return hmac.compare_digest(given.encode(), token.get_secret_value().encode())


async def require_token(request: Request) -> None:
    if not await is_authorised(request):
        raise HTTPException(401, "a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})


def actor(request: Request) -> tuple[str, str]:
    """Who made a change, for the audit trail: the API (by token) and the client address."""
    client = request.client.host if request.client else ""
    return "admin-api", client

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


async def require_token(request: Request) -> None:
    token = request.app.state.context.settings.node.http_token
    if token is None:
        return
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})


def actor(request: Request) -> tuple[str, str]:
    """Who made a change, for the audit trail: the API (by token) and the client address."""
    client = request.client.host if request.client else ""
    return "admin-api", client

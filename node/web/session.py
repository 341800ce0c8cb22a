"""Browser sessions of the dashboard: a signed session cookie, its CSRF token, and status
messages ("flash") the node itself issued.

The cookie (HttpOnly, SameSite=Strict) holds a random session id and its HMAC, never the
token or anything the browser sent. The HMAC key is derived from ``node.http_token`` when
one is set (so only a sign-in can make a valid session, and changing the token ends every
session), else a random key of this web process (a session per browser, for CSRF only).
Every dashboard form carries the session's CSRF token (an HMAC of its id), checked on POST
(:func:`require_csrf`); a status message travels in the redirect with its HMAC, so a link
from elsewhere cannot put its author's text in the node's status box.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import HTTPException, Request, Response

SESSION_COOKIE = "ainode_session"
CSRF_FIELD = "csrf"
_PROCESS_KEY = secrets.token_bytes(32)


def _key(request: Request) -> bytes:
    token = request.app.state.context.settings.node.http_token
    if token is None:
        return _PROCESS_KEY
    return hashlib.sha256(b"ainode session\0" + token.get_secret_value().encode()).digest()


def _mac(request: Request, purpose: str, value: str) -> str:
    return hmac.new(_key(request), f"{purpose}\0{value}".encode(), "sha256").hexdigest()[:40]


def session_id(request: Request) -> str | None:
    """The id of the browser's valid session, or ``None``."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    sid, _, mac = cookie.partition(".")
    if not sid or len(sid) > 64 or not hmac.compare_digest(mac, _mac(request, "session", sid)):
        return None
    return sid


def start_session(request: Request) -> str:
    """A new session for this browser, current for the rest of this request; returns its id
    (:func:`set_session_cookie` gives it to the browser)."""
    sid = secrets.token_urlsafe(24)
    request.state.new_session = sid
    return sid


def set_session_cookie(request: Request, response: Response, sid: str) -> None:
    response.set_cookie(SESSION_COOKIE, f"{sid}.{_mac(request, 'session', sid)}",
                        httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def current_session(request: Request) -> str | None:
    """The session of this request: the cookie's, or one started while answering it."""
    return getattr(request.state, "new_session", None) or session_id(request)


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session ('' without one)."""
    sid = current_session(request)
    return _mac(request, "csrf", sid) if sid else ""


def require_csrf(request: Request, given: str) -> None:
    """403 unless ``given`` is the CSRF token of the browser's session."""
    sid = session_id(request)
    if sid is None or not given or not hmac.compare_digest(given, _mac(request, "csrf", sid)):
        raise HTTPException(403, "this form did not come from this node's pages (reload the "
                                 "page and try again)")


def signed_flash(request: Request, message: str, error: bool) -> str:
    return _mac(request, "flash", f"{int(error)}{message}")


def verified_flash(request: Request) -> tuple[str | None, bool]:
    """The status message in the URL, if this node issued it; and whether it is an error."""
    message = request.query_params.get("flash")
    if not message:
        return None, False
    error = request.query_params.get("error") == "1"
    given = request.query_params.get("sig", "")
    if not hmac.compare_digest(given, signed_flash(request, message, error)):
        return None, False
    return message, error

"""The web role: health, metrics, the admin API, peers managed live and STOW-RS in (FastAPI,
served by uvicorn on ``node.http_port``). One router per resource; :mod:`app` composes them."""

__all__ = [
    "api",
    "app",
    "auth",
    "charts",
    "context",
    "dashboard",
    "dicomweb",
    "guard",
    "health",
    "metrics",
    "peers",
    "server",
    "session",
    "throttle",
]

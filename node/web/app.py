"""The web role's FastAPI application (OpenAPI at ``/docs``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from node import __version__
from node.web import api, dashboard, dicomweb, guard, health, metrics, peers
from node.web.auth import audited_failures, require_token
from node.web.context import WebContext

# Swagger UI's script and style, shipped by fastapi-offline: /docs works on a hospital network
# without the internet (FastAPI's default loads them from a CDN)
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
DOCS_STATIC = "/docs-static"


def create_app(context: WebContext) -> FastAPI:
    app = FastAPI(
        title="ainode", version=__version__, docs_url=None, openapi_url=None,
        description="PACS-integrated AI inference node: health, metrics, admin API, peers "
        "(AE titles) managed live, STOW-RS in. Everything but /healthz and /readyz needs "
        "`Authorization: Bearer <node.http_token>` when a token is set.")
    app.state.context = context
    app.state.registry = metrics.registry_for(context)
    app.state.auth_failures = audited_failures(context)
    guard.install(app, context.settings.node)
    for router in (health.router, metrics.router, api.router, peers.router, dicomweb.router,
                   dashboard.public, dashboard.router):
        app.include_router(router)

    @app.exception_handler(dashboard.SignInRequired)
    async def sign_in(request: Request, exc: dashboard.SignInRequired) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    # the API's description, behind the token like the API itself
    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_token)])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="ainode API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")

    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)

    return app

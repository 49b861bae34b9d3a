"""The gateway's web page and API docs: served by the HTTP bridge at ``/`` (page), ``/docs`` (Swagger UI) and
``/web/`` (assets).

The page's sources are in ``gateway/web/src/``; ``npm run build`` (run by ``make setup``) bundles them with
their npm dependencies (``@google/model-viewer`` with three.js; ``swagger-ui-dist`` for ``/docs``) into
``gateway/web/dist/``, which the gateway serves itself: nothing is loaded from a CDN. Without a build ``/``
and ``/docs`` answer 503 with the command to run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

#: Where ``gateway/web/build.mjs`` writes the page.
DIST_DIR = Path(__file__).resolve().parent / "dist"

NOT_BUILT = {
    "error": {
        "code": "UNAVAILABLE",
        "message": "the web page is not built; run `npm install && npm run build` (or `make setup`) in the "
        "repository, then reload. The API under /v1 works without it.",
        "details": [],
    }
}


def add_web_page(app: FastAPI, dist_dir: Path = DIST_DIR) -> None:
    """Serve ``dist_dir/index.html`` at ``/``, Swagger UI at ``/docs`` (for ``app.openapi_url``; create the
    app with ``docs_url=None``) and the other built files under ``/web/``. No authentication: the pages ask
    for the token and send it with their API calls."""

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> Response:
        page = dist_dir / "index.html"
        if not page.is_file():
            return JSONResponse(NOT_BUILT, status_code=503)
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False, response_model=None)
    def docs() -> Response:
        if not (dist_dir / "docs" / "swagger-ui-bundle.js").is_file():
            return JSONResponse(NOT_BUILT, status_code=503)
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/web/docs/swagger-ui-bundle.js",
            swagger_css_url="/web/docs/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    if dist_dir.is_dir():
        app.mount("/web", StaticFiles(directory=dist_dir), name="web")
        return

    @app.get("/web/{path:path}", include_in_schema=False)
    def not_built(path: str) -> JSONResponse:
        return JSONResponse(NOT_BUILT, status_code=503)

"""The gateway's web page: static files served by the HTTP bridge at ``/`` (page) and ``/web/`` (assets).

The page's sources are in ``gateway/web/src/``; ``npm run build`` (run by ``make setup``) bundles them with
their npm dependencies (``@google/model-viewer`` with three.js) into ``gateway/web/dist/``, which the gateway
serves itself: nothing is loaded from a CDN. Without a build ``/`` answers 503 with the command to run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
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
    """Serve ``dist_dir/index.html`` at ``/`` and the other built files under ``/web/`` (no authentication:
    the page asks for the token and sends it with its API calls)."""

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> Response:
        page = dist_dir / "index.html"
        if not page.is_file():
            return JSONResponse(NOT_BUILT, status_code=503)
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    if dist_dir.is_dir():
        app.mount("/web", StaticFiles(directory=dist_dir), name="web")
        return

    @app.get("/web/{path:path}", include_in_schema=False)
    def not_built(path: str) -> JSONResponse:
        return JSONResponse(NOT_BUILT, status_code=503)

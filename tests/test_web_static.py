"""The gateway serves its web page at ``/`` and the built assets under ``/web/``; unbuilt, it says how."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.web import add_web_page


def test_page_and_assets_are_served_from_the_build(tmp_path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>page</title>")
    (tmp_path / "app.js").write_text("console.log('app');")
    app = FastAPI()
    add_web_page(app, tmp_path)
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>page</title>" in page.text
    script = client.get("/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/web/missing.js").status_code == 404


def test_without_a_build_the_page_answers_503_with_the_command(tmp_path) -> None:
    app = FastAPI()
    add_web_page(app, tmp_path / "dist")
    client = TestClient(app)
    for path in ("/", "/web/app.js"):
        response = client.get(path)
        assert response.status_code == 503
        assert "npm run build" in response.json()["error"]["message"]


def test_the_page_needs_nothing_from_other_hosts() -> None:
    from gateway.web import DIST_DIR

    source = (DIST_DIR.parent / "src" / "index.html").read_text()
    assert "http://" not in source and "https://" not in source


def test_docs_use_the_local_swagger_ui(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "swagger-ui-bundle.js").write_text("/* bundle */")
    app = FastAPI(docs_url=None, redoc_url=None)
    add_web_page(app, tmp_path)
    page = TestClient(app).get("/docs")
    assert page.status_code == 200
    assert "/web/docs/swagger-ui-bundle.js" in page.text and "/web/docs/swagger-ui.css" in page.text
    assert "cdn." not in page.text


def test_the_gateway_app_serves_no_cdn_docs() -> None:
    from types import SimpleNamespace

    from gateway.http import build_app
    from gateway.profile_file import load_profiles
    from gateway.webhooks import WebhookSettings

    # Routes are only declared, not called: the app reads the profile names and whether webhooks are on.
    manager = SimpleNamespace(settings=SimpleNamespace(profiles=load_profiles(), webhooks=WebhookSettings()))
    app = build_app(manager=manager)  # type: ignore[arg-type]
    client = TestClient(app)
    assert client.get("/redoc").status_code == 404
    docs = client.get("/docs")
    assert docs.status_code in (200, 503)  # 503: the page is not built here
    assert "cdn.jsdelivr" not in docs.text


def test_every_built_file_is_package_data() -> None:
    """An installed gateway (a wheel, the Docker images) carries every file of the built page: each file
    under gateway/web/dist matches a package-data pattern of pyproject.toml (``dist/*`` misses dist/docs)."""
    root = Path(__file__).resolve().parents[1]
    dist = root / "gateway" / "web" / "dist"
    if not (dist / "index.html").exists():
        pytest.skip("the web page is not built (make setup)")
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "gateway.web"
    ]
    files = [path.relative_to(dist.parent).as_posix() for path in dist.rglob("*") if path.is_file()]

    def installed(name: str) -> bool:  # setuptools globs: '*' stays inside one folder
        path = PurePosixPath(name)
        return any(len(path.parts) == len(PurePosixPath(p).parts) and path.match(p) for p in patterns)

    missed = [name for name in files if not installed(name)]
    assert files and not missed, f"not installed with the gateway: {missed}"


def test_every_data_file_of_the_packages_is_package_data() -> None:
    """An installed package (a wheel, the Docker images) carries the data files it reads at run time: every
    tracked file inside the Python packages that is not Python (the web page's sources aside: they are built
    into gateway/web/dist, checked above) matches a package-data pattern of its package. The images once
    shipped a gateway without gateway/profiles.toml, which then could not start."""
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "gateway", "synchuman", "services", "synchuman_cli"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    data = [
        name
        for name in listed
        if not name.endswith((".py", ".pyi")) and not name.startswith("gateway/web/") and "/" in name
    ]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]

    def installed(name: str) -> bool:  # the pattern is relative to the package folder holding the file
        path = PurePosixPath(name)
        for package, patterns in package_data.items():
            folder = PurePosixPath(*package.split("."))
            if folder in path.parents:
                relative = path.relative_to(folder)
                depth = len(relative.parts)
                if any(depth == len(PurePosixPath(p).parts) and relative.match(p) for p in patterns):
                    return True
        return False

    assert "gateway/profiles.toml" in data
    missed = [name for name in data if not installed(name)]
    assert not missed, f"not installed with the packages (add to [tool.setuptools.package-data]): {missed}"

"""Non-Python clients of the contract, run by ``make test``: the TypeScript client package and the web page.

The node suites (``clients/typescript/test/``, ``tests/node/web_page.test.mjs``) run against one deployment
that ``tests/node/run_suites.mjs`` starts (four ``synchuman serve`` processes on free ports, tiny random
checkpoints) and stops even on failure; here they are built and run, and their TAP output is shown when they
fail. Each suite also runs alone (``node --test FILE``), starting its own deployment.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

NODE_MODULES = REPO_ROOT / "node_modules"
CLIENT = REPO_ROOT / "clients" / "typescript"
GENERATED = Path("clients") / "typescript" / "src" / "gen"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")


def _run(
    args: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        require_tool(Path("/usr/bin/node"), "node")
    return node or "/usr/bin/node"


def _tree_differences(left: Path, right: Path) -> list[str]:
    """Relative paths that differ between two folders (missing on either side or with other content)."""
    compared = filecmp.dircmp(left, right)
    differences = [*compared.left_only, *compared.right_only, *compared.diff_files, *compared.funny_files]
    for name, sub in compared.subdirs.items():
        differences += [f"{name}/{d}" for d in _tree_differences(Path(sub.left), Path(sub.right))]
    return differences


def _npm() -> str:
    """npm, with the client workspace installed (``npm install`` / ``make setup``)."""
    npm = shutil.which("npm")
    if npm is None:
        require_tool(Path("/usr/bin/npm"), "npm")
    require_tool(NODE_MODULES / "@synchuman" / "client", "the client workspace (npm install)")
    return npm or "npm"


def test_generated_typescript_is_up_to_date(tmp_path) -> None:
    generate = [_npm(), "run", "--silent", "generate", "-w", "clients/typescript", "--", "--output"]
    result = _run([*generate, str(tmp_path)], 120)
    assert result.returncode == 0, result.stdout + result.stderr
    stale = _tree_differences(tmp_path / GENERATED, REPO_ROOT / GENERATED)
    assert stale == [], f"{GENERATED} is stale ({stale}); run `make protos`"


def test_client_package_contents() -> None:
    npm = _npm()
    assert _run([npm, "run", "build", "-w", "clients/typescript"], 300).returncode == 0
    result = _run([npm, "pack", "--dry-run", "--json", "-w", "clients/typescript"], 120)
    assert result.returncode == 0, result.stderr
    (packed,) = json.loads(result.stdout)
    files = {f["path"] for f in packed["files"]}
    assert {"README.md", "package.json", "dist/index.js", "dist/index.d.ts"} <= files
    assert "dist/gen/synchuman/v1/reconstruction_pb.js" in files
    assert not any(f.startswith(("src/", "test/")) for f in files), "only the built package is published"
    print(f"@synchuman/client: {packed['size']} bytes packed, {packed['unpackedSize']} unpacked")


@pytest.mark.slow
def test_typescript_client_and_web_page_against_a_live_gateway(images_dir: Path) -> None:
    """The node suites on one deployment (``tests/node/run_suites.mjs``); the page's suites need Chromium (the
    rigged-animation suite serves the built page itself and makes its GLB with the Python rig core).
    The suites upload the real photos of ``images_dir`` (skipped without them, failed under CI)."""
    npm = _npm()
    require_tool(NODE_MODULES / "puppeteer-core", "puppeteer-core (npm install)")
    assert _run([npm, "run", "build", "-w", "clients/typescript"], 300).returncode == 0
    built = _run([_node(), "gateway/web/build.mjs"], 120)
    assert built.returncode == 0, built.stderr
    suites = ["clients/typescript/test/"]
    if CHROMIUM.exists():
        suites += ["tests/node/web_page.test.mjs", "tests/node/rig_animation.test.mjs"]
    env = {**os.environ, "SYNCHUMAN_IMAGES_DIR": str(images_dir)}
    result = _run([_node(), "tests/node/run_suites.mjs", *suites], 1500, env)
    summary = "\n".join(line for line in result.stdout.splitlines() if line.startswith("# "))
    print(summary)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    require_tool(CHROMIUM, "chromium (apt-get install chromium; scripts/bootstrap.sh installs it)")

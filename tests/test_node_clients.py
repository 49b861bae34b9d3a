"""Non-Python clients of the contract, run by ``make test``: the TypeScript client package and the web page.

The node suites (``clients/typescript/test/``, ``tests/node/web_page.test.mjs``) start their own deployment
(four ``synchuman serve`` processes on free ports, tiny random checkpoints) and stop it even on failure; here
they are built and run, and their TAP output is shown when they fail.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

NODE_MODULES = REPO_ROOT / "node_modules"
CLIENT = REPO_ROOT / "clients" / "typescript"
GENERATED = Path("clients") / "typescript" / "src" / "gen"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)


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


def test_generated_typescript_is_up_to_date(tmp_path) -> None:
    buf = require_tool(NODE_MODULES / ".bin" / "buf", "buf (npm @bufbuild/buf)")
    require_tool(NODE_MODULES / ".bin" / "protoc-gen-es", "protoc-gen-es (npm @bufbuild/protoc-gen-es)")
    result = _run([str(buf), "generate", "--template", "buf.gen.yaml", "--output", str(tmp_path)], 120)
    assert result.returncode == 0, result.stderr
    stale = _tree_differences(tmp_path / GENERATED, REPO_ROOT / GENERATED)
    assert stale == [], f"{GENERATED} is stale ({stale}); run `make protos`"


def test_client_package_contents() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not installed")
    require_tool(NODE_MODULES / ".bin" / "tsc", "typescript (npm install)")
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
def test_typescript_client_against_a_live_gateway() -> None:
    require_tool(NODE_MODULES / ".bin" / "tsc", "typescript (npm install)")
    npm = shutil.which("npm") or "npm"
    assert _run([npm, "run", "build", "-w", "clients/typescript"], 300).returncode == 0
    result = _run([_node(), "--test", "--test-concurrency=1", "clients/typescript/test/"], 1200)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


@pytest.mark.slow
def test_web_page_in_headless_chromium() -> None:
    require_tool(CHROMIUM, "chromium (apt-get install chromium; scripts/bootstrap.sh installs it)")
    require_tool(NODE_MODULES / "puppeteer-core", "puppeteer-core (npm install)")
    built = _run([_node(), "gateway/web/build.mjs"], 120)
    assert built.returncode == 0, built.stderr
    result = _run([_node(), "--test", "--test-concurrency=1", "tests/node/web_page.test.mjs"], 1200)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]

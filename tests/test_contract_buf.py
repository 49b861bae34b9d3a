"""The contract builds anywhere: ``buf build`` / ``buf lint`` on ``protos/`` alone, and ``buf breaking``.

``buf breaking`` compares the working tree's protos with a reference revision: ``$SYNCHUMAN_BUF_AGAINST``
(any git revision) when set, else the newest ``v*`` release tag, else the previous commit (``HEAD~1``). The
reference is exported with ``git archive`` and built to an image first, today's vendored ``protos/google``
being supplied when that revision predates the vendoring, so that old revisions build offline too.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool(BUF, "buf (npm @bufbuild/buf)")
    return subprocess.run([str(tool), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=60)


def reference_revision() -> str | None:
    """The revision ``buf breaking`` compares against (see the module docstring); None when there is none."""
    if os.environ.get("SYNCHUMAN_BUF_AGAINST"):
        return os.environ["SYNCHUMAN_BUF_AGAINST"]
    tag = _git("describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD")
    if tag.returncode == 0:
        return tag.stdout.decode().strip()
    if _git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}").returncode == 0:
        return "HEAD~1"
    return None


def export_protos(revision: str, dest: Path) -> Path:
    """``protos/`` as of ``revision`` under ``dest``; today's vendored googleapis files fill in if absent."""
    archive = _git("archive", "--format=tar", revision, "protos")
    assert archive.returncode == 0, archive.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    protos = dest / "protos"
    if not (protos / "google" / "rpc" / "status.proto").is_file():
        shutil.copytree(REPO_ROOT / "protos" / "google", protos / "google", dirs_exist_ok=True)
    return protos


def test_buf_build_needs_nothing_but_protos() -> None:
    result = _buf("build", "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_passes_on_protos() -> None:
    result = _buf("lint", "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vendored_googleapis_files_carry_their_licence() -> None:
    vendored = REPO_ROOT / "protos" / "google"
    assert "Apache License" in (vendored / "LICENSE").read_text()
    for proto in (vendored / "rpc").glob("*.proto"):
        assert "Licensed under the Apache License" in proto.read_text(), proto


def test_buf_breaking_against_the_reference_revision(tmp_path) -> None:
    revision = reference_revision()
    if revision is None:
        pytest.skip("no v* tag and no previous commit (shallow clone?): nothing to compare the contract with")
    reference = tmp_path / "reference.binpb"
    built = _buf("build", str(export_protos(revision, tmp_path / "ref")), "-o", str(reference))
    assert built.returncode == 0, f"the protos of {revision} do not build: {built.stderr}"
    result = _buf("breaking", "protos", "--against", str(reference))
    assert result.returncode == 0, f"breaking changes against {revision}:\n{result.stdout}{result.stderr}"


def test_buf_breaking_detects_a_removed_field(tmp_path) -> None:
    """The check can fail: a copy of today's protos with a field removed breaks against today's image."""
    today = tmp_path / "today.binpb"
    assert _buf("build", "protos", "-o", str(today)).returncode == 0
    changed = tmp_path / "protos"
    shutil.copytree(REPO_ROOT / "protos", changed)
    common = changed / "synchuman" / "v1" / "common.proto"
    text = common.read_text()
    assert "  string sha256 = 4;\n" in text
    common.write_text(text.replace("  string sha256 = 4;\n", ""))
    result = _buf("breaking", str(changed), "--against", str(today))
    assert result.returncode != 0
    assert "sha256" in result.stdout + result.stderr

"""Defaults an operator meets first: ``make serve`` / ``synchuman serve`` keep jobs and uploaded photos in a
folder git ignores (issue 17 #10)."""

from __future__ import annotations

import subprocess

from conftest import REPO_ROOT

from gateway.server import GatewayConfig


def test_the_default_data_dir_is_ignored_by_git() -> None:
    data_dir = GatewayConfig().data_dir
    assert not data_dir.is_absolute()  # relative to where `make serve` runs: the repository root
    for stored in ("jobs.sqlite3", "artifacts/abc/input"):
        path = data_dir / stored
        ignored = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", str(path)], cwd=REPO_ROOT, check=False
        )
        assert ignored.returncode == 0, f"{path} (uploaded photos, job records) is not ignored by .gitignore"

"""Refresh the lock files in ``requirements/`` from ``pyproject.toml`` (``make lock``).

    python scripts/lock.py                                  # follow pyproject.toml, keep other pins
    python scripts/lock.py --upgrade-package grpcio-tools   # move one package to its newest allowed version
    python scripts/lock.py --upgrade                        # move everything

Two hashed lock files are written with ``uv pip compile`` (uv keeps every pin already in the file unless told
to upgrade it):

* ``requirements/dev.txt``: core + ``[dev]`` (every extra, test tools): what ``make setup`` and CI install.
* ``requirements/all.txt``: core + ``[all]``: what the Docker images install; resolved inside ``dev.txt``, so
  the images run exactly the versions CI tested.

torch is the one exception: its build differs per machine (CPU here, CUDA on a GPU host), so it is pinned by
version in ``requirements/torch.txt`` and installed first (``scripts/bootstrap.sh``, the Dockerfile's
``TORCH_SPEC``); its own dependencies (sympy, networkx, ...) are locked as the CPU build lists them, found in
``$SYNCHUMAN_TORCH_FIND_LINKS`` (default ``/opt/wheels``, a folder holding the CPU wheel; pip's usual index is
used when it is missing). The resolution targets CPython 3.11 on Linux; every file of each pinned version is
hashed, so the same lock installs on 3.12 (the CUDA image). Each lock file starts with the fingerprint of the
dependency tables of ``pyproject.toml`` it was made from; ``tests/test_lock.py`` fails when they disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO / "requirements"
#: Lock file -> the extra of pyproject.toml it locks.
LOCKS = {"dev.txt": "dev", "all.txt": "all"}
TORCH_PIN = LOCK_DIR / "torch.txt"
FINGERPRINT_PREFIX = "# pyproject.toml dependencies sha256: "
PYTHON_VERSION = "3.11"


def dependency_fingerprint(pyproject: Path = REPO / "pyproject.toml") -> str:
    """SHA-256 of ``[project] dependencies`` and ``optional-dependencies`` (order-insensitive JSON)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    tables = {
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in project.get("optional-dependencies", {}).items()},
    }
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def torch_pin() -> str:
    """The ``torch==X`` line of ``requirements/torch.txt``."""
    lines = [line.strip() for line in TORCH_PIN.read_text().splitlines()]
    return next(line for line in lines if line and not line.startswith("#"))


def compile_lock(name: str, extra: str, uv_args: list[str], constraints: list[Path]) -> None:
    """Run ``uv pip compile`` for one extra into ``requirements/<name>``, then stamp the fingerprint."""
    out = LOCK_DIR / name
    command = [
        sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml", "--extra", extra,
        "--python-version", PYTHON_VERSION, "--python-platform", "linux", "--generate-hashes",
        "--no-emit-package", "torch", "--custom-compile-command", "make lock", "--quiet", "-o", str(out),
    ]
    find_links = os.environ.get("SYNCHUMAN_TORCH_FIND_LINKS", "/opt/wheels")
    if Path(find_links).is_dir():
        command += ["--find-links", find_links]
    for path in constraints:
        command += ["-c", str(path)]
    subprocess.run(command + uv_args, cwd=REPO, check=True)
    body = [line for line in out.read_text().splitlines() if not line.startswith(FINGERPRINT_PREFIX)]
    out.write_text("\n".join([FINGERPRINT_PREFIX + dependency_fingerprint(), *body]) + "\n")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        torch_constraint = Path(folder) / "torch.txt"
        pin = torch_pin()
        local = "+cpu" if Path(os.environ.get("SYNCHUMAN_TORCH_FIND_LINKS", "/opt/wheels")).is_dir() else ""
        torch_constraint.write_text(pin + local + "\n")
        compile_lock("dev.txt", LOCKS["dev.txt"], argv, [torch_constraint])
        compile_lock("all.txt", LOCKS["all.txt"], [], [torch_constraint, LOCK_DIR / "dev.txt"])
    print(f"lock files written: {', '.join(str(LOCK_DIR / name) for name in LOCKS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

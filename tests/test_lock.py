"""The lock files in ``requirements/`` agree with ``pyproject.toml`` and with what is installed.

``make lock`` (scripts/lock.py) writes them; ``make setup``, CI and the Docker images install from them. These
tests fail when pyproject.toml changed without ``make lock``, when a lock lost its hashes, and when the venv
running the tests drifted from the lock (``make setup`` reinstalls it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO / "requirements"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)")


def load_lock_script():
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(name: str) -> dict[str, str]:
    """Canonical package name -> pinned version of one lock file."""
    found = {}
    for line in (LOCK_DIR / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def direct_requirements(extra: str) -> list[Requirement]:
    """The core dependencies plus those of ``extra``, the project's own extras expanded (torch left out)."""
    own = canonicalize_name(PROJECT["name"])
    found: list[Requirement] = []
    seen: set[str] = set()

    def visit(lines: list[str]) -> None:
        for line in lines:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == own:
                for name in sorted(requirement.extras - seen):
                    seen.add(name)
                    visit(PROJECT["optional-dependencies"][name])
            elif canonicalize_name(requirement.name) != "torch":
                found.append(requirement)

    seen.add(extra)
    visit(PROJECT["dependencies"] + PROJECT["optional-dependencies"][extra])
    return found


@pytest.mark.parametrize("lock", ["dev.txt", "all.txt"])
def test_lock_was_made_from_this_pyproject(lock: str) -> None:
    """The fingerprint line that ``make lock`` writes matches pyproject.toml's dependency tables."""
    script = load_lock_script()
    first = (LOCK_DIR / lock).read_text().splitlines()[0]
    assert first == script.FINGERPRINT_PREFIX + script.dependency_fingerprint(), (
        f"requirements/{lock} was not made from this pyproject.toml: run `make lock` and commit both"
    )


@pytest.mark.parametrize(("lock", "extra"), [("dev.txt", "dev"), ("all.txt", "all")])
def test_every_requirement_is_pinned_within_its_range(lock: str, extra: str) -> None:
    pinned = pins(lock)
    for requirement in direct_requirements(extra):
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements/{lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pinned[name]} outside {requirement}: run `make lock`"
        )


@pytest.mark.parametrize("lock", ["dev.txt", "all.txt"])
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    """pip's hash-checking mode needs ``==`` and at least one sha256 per package; torch stays out."""
    text = (LOCK_DIR / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1])
    packages = [entry for entry in entries if not entry.startswith("#")]
    assert len(packages) == len(pins(lock)) > 20
    for entry in packages:
        assert PIN.match(entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, f"{entry.splitlines()[0]} has no hash"
    assert "torch" not in pins(lock)


def test_images_run_the_versions_ci_tested() -> None:
    """all.txt (the images) is a subset of dev.txt (setup and CI) at the same versions."""
    dev, images = pins("dev.txt"), pins("all.txt")
    assert {name: dev.get(name) for name in images} == images


def test_installed_packages_match_the_lock() -> None:
    """The venv running the tests holds exactly the locked versions (else `make setup` was not run)."""
    drift = []
    for name, version in pins("dev.txt").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            drift.append(f"{name} missing (lock: {version})")
            continue
        if installed != version:
            drift.append(f"{name} {installed} installed, lock: {version}")
    assert not drift, "the venv differs from requirements/dev.txt (run `make setup`): " + "; ".join(drift)


def test_torch_pin_is_the_one_installed() -> None:
    import torch

    pin = load_lock_script().torch_pin()
    assert pin.startswith("torch==")
    assert torch.__version__.split("+")[0] == pin.split("==")[1]

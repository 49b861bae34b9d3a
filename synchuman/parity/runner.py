"""Find parity fixture folders, run each registered kind, print one line per fixture.

A fixture folder holds all of :data:`~synchuman.parity.registry.FIXTURE_FILES`; other folders (e.g. one with
only ``meta.json`` and ``io.safetensors`` but no ``config.json``) are skipped silently.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from synchuman.parity.registry import FIXTURE_FILES, Check, Fixture, load_fixture, registered_kinds

# Modules that register fixture kinds; a missing optional module (not written yet) is skipped.
KIND_MODULES = ("synchuman.parity.stage2", "synchuman.parity.stage1")


def import_kind_modules() -> None:
    """Import every module of :data:`KIND_MODULES` that exists (they register kinds on import)."""
    for name in KIND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Every fixture folder under ``paths`` (a path may itself be a fixture folder), sorted, no duplicates."""
    found: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        candidates = [root] if root.is_dir() else []
        candidates += [p for p in root.rglob("*") if p.is_dir()] if root.is_dir() else []
        found.update(p.resolve() for p in candidates if all((p / f).is_file() for f in FIXTURE_FILES))
    return sorted(found)


@dataclass
class FixtureResult:
    """Outcome of one fixture."""

    fixture: Path
    kind: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)

    def line(self, root: Path | None = None) -> str:
        """``PASS|FAIL  <folder>  [kind]  max_abs=<err>  ...`` (one line)."""
        where = str(self.fixture.relative_to(root)) if root and self.fixture.is_relative_to(root) else str(
            self.fixture
        )
        status = "PASS" if self.passed else "FAIL"
        head = f"{status}  {where}  [{self.kind}]"
        if self.error is not None:
            return f"{head}  error: {self.error}"
        numeric = [c.error for c in self.checks if c.numeric]
        worst = max(numeric, default=0.0)
        tols = sorted({c.tolerance for c in self.checks})
        tol_text = "/".join(f"{t:g}" for t in tols)
        text = f"{head}  max_abs={worst:.3g}  ({len(self.checks)} checks, tol {tol_text})"
        failed = [c for c in self.checks if not c.passed]
        if failed:
            text += "  failed: " + "; ".join(
                f"{c.name} {c.error:.3g}>{c.tolerance:g}" + (f" ({c.detail})" if c.detail else "")
                for c in failed
            )
        elif not self.checks:
            text += "  no checks ran"
        return f"{text}  [{self.seconds:.1f}s]"


def run_fixture(folder: Path, device: torch.device) -> FixtureResult:
    """Run one fixture folder; any exception becomes the result's ``error``."""
    start = time.perf_counter()
    kinds = registered_kinds()
    result = FixtureResult(folder, "?")
    try:
        fixture: Fixture = load_fixture(folder, device)
        result.kind = fixture.kind
        if fixture.kind not in kinds:
            known = ", ".join(sorted(kinds)) or "none"
            module = fixture.meta.get("module")
            raise LookupError(f"no parity runner for this folder (meta module {module!r}); kinds: {known}")
        with torch.inference_mode():
            result.checks = list(kinds[fixture.kind].runner(fixture))
        for check in result.checks:
            if math.isnan(check.error):
                check.passed = False
    except Exception as exc:  # reported per fixture, the run goes on
        result.error = f"{type(exc).__name__}: {exc}".replace("\n", " | ")
    result.seconds = time.perf_counter() - start
    return result


def run_parity(
    paths: Sequence[str | Path], device: str = "cpu", out: TextIO | None = None
) -> list[FixtureResult]:
    """Discover and run every fixture under ``paths``; print one line per fixture to ``out``."""
    import_kind_modules()
    folders = discover(paths)
    common = _common_root(folders)
    results = []
    for folder in folders:
        result = run_fixture(folder, torch.device(device))
        results.append(result)
        if out is not None:
            print(result.line(common), file=out, flush=True)
    return results


def _common_root(folders: Iterable[Path]) -> Path | None:
    parents = [f.parent for f in folders]
    if not parents:
        return None
    root = parents[0]
    while not all(p.is_relative_to(root) for p in parents):
        root = root.parent
    return root

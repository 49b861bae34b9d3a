"""Registry of parity fixture kinds.

A parity fixture is a folder holding ``config.json`` (the model config), ``model.safetensors`` (weights with
upstream key names), ``io.safetensors`` (inputs ``in.*``, outputs ``out.*``, intermediates ``mid.*``) and
``meta.json`` (how the call is made). Each *kind* of fixture (``slat_flow``, ``decoder_gs``, ...) has a
runner that builds our implementation, replays the recorded call and returns :class:`Check` results.

Adding a kind (e.g. in ``synchuman/parity/stage1.py``)::

    from synchuman.parity.registry import Fixture, Check, compare, register_fixture_kind

    @register_fixture_kind("ss_decoder", modules=("SparseStructureDecoder",))
    def run_ss_decoder(fixture: Fixture) -> list[Check]:
        model = build_my_model(fixture.config, fixture.path / "model.safetensors")
        out = model(fixture.tensor("in.x").to(fixture.device))
        return [compare("out.logits", out, fixture.tensor("out.logits"), atol=1e-4)]

``modules`` lists ``meta.json["module"]`` values that identify the kind when the folder has another name.
Runners should honour ``fixture.device`` and may read ``fixture.meta["structural_overrides"]``. Any exception
a runner raises is reported as a FAIL line for that fixture (the run goes on with the next fixture).
The runner module is imported by :mod:`synchuman.parity.runner` (see ``KIND_MODULES`` there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from synchuman.checkpoints.loading import read_safetensors

FIXTURE_FILES = ("config.json", "model.safetensors", "io.safetensors", "meta.json")


@dataclass
class Check:
    """One comparison result: ``error`` vs ``tolerance``.

    ``numeric`` checks report a max abs difference (summarised as the fixture's ``max_abs``); structural
    checks (``numeric=False``, e.g. mesh topology) report a count of mismatches.
    """

    name: str
    error: float
    tolerance: float
    passed: bool
    detail: str = ""
    numeric: bool = True


@dataclass
class Fixture:
    """A fixture folder plus the run options (device)."""

    path: Path
    kind: str
    config: dict[str, Any]
    meta: dict[str, Any]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @cached_property
    def io(self) -> dict[str, torch.Tensor]:
        """All tensors of ``io.safetensors`` (on the CPU, as stored)."""
        return read_safetensors(self.path / "io.safetensors")

    def tensor(self, key: str) -> torch.Tensor:
        """One stored tensor; ``KeyError`` naming the fixture and the available prefixes if absent."""
        if key not in self.io:
            prefixes = sorted({k.split(".")[0] for k in self.io})
            raise KeyError(f"{self.path}: io.safetensors has no {key!r} (prefixes: {', '.join(prefixes)})")
        return self.io[key]

    @property
    def structural_overrides(self) -> dict[str, Any]:
        """``meta.json["structural_overrides"]`` without the note and without null entries."""
        raw = self.meta.get("structural_overrides") or {}
        return {k: v for k, v in raw.items() if k != "note" and v is not None}


FixtureRunner = Callable[[Fixture], Iterable[Check]]


@dataclass(frozen=True)
class FixtureKind:
    name: str
    runner: FixtureRunner
    modules: tuple[str, ...]


_KINDS: dict[str, FixtureKind] = {}


def register_fixture_kind(name: str, modules: Iterable[str] = ()) -> Callable[[FixtureRunner], FixtureRunner]:
    """Decorator registering ``runner`` for fixture kind ``name`` (and ``meta.json`` module names)."""

    def decorate(runner: FixtureRunner) -> FixtureRunner:
        _KINDS[name] = FixtureKind(name, runner, tuple(modules))
        return runner

    return decorate


def registered_kinds() -> dict[str, FixtureKind]:
    """Snapshot of the registered kinds by name."""
    return dict(_KINDS)


def resolve_kind(folder: Path, meta: dict[str, Any]) -> str | None:
    """Kind of a fixture folder: ``meta["kind"]``, then the folder name, then ``meta["module"]``, then the
    longest registered kind name the folder name starts with. ``None`` when nothing matches."""
    if isinstance(meta.get("kind"), str) and meta["kind"] in _KINDS:
        return meta["kind"]
    name = folder.name.lower()
    for kind in _KINDS:
        if kind.lower() == name:
            return kind
    module = meta.get("module")
    for kind in _KINDS.values():
        if module in kind.modules:
            return kind.name
    prefixed = [k for k in _KINDS if name.startswith(k.lower())]
    return max(prefixed, key=len) if prefixed else None


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float) -> Check:
    """Max-abs comparison of two tensors (shapes must match; compared in fp64 on the CPU)."""
    ours_c = ours.detach().to("cpu", torch.float64)
    ref_c = reference.detach().to("cpu", torch.float64)
    if ours_c.shape != ref_c.shape:
        return Check(name, float("inf"), atol, False, f"shape {tuple(ours_c.shape)} vs {tuple(ref_c.shape)}")
    if ours_c.numel() == 0:
        return Check(name, 0.0, atol, True)
    if not torch.isfinite(ours_c).all():
        return Check(name, float("inf"), atol, False, "non-finite values")
    err = float((ours_c - ref_c).abs().max())
    return Check(name, err, atol, err <= atol)


def load_fixture(folder: Path, device: torch.device) -> Fixture:
    """Read a fixture's ``config.json`` and ``meta.json`` and resolve its kind (``"?"`` if unknown)."""
    config = json.loads((folder / "config.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    return Fixture(folder, resolve_kind(folder, meta) or "?", config, meta, device)

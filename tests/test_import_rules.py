"""The core library knows no service: no module of ``synchuman/`` imports ``services``, ``gateway``, the CLI
package ``synchuman_cli`` or ``opentelemetry`` (tracing belongs to the services), statically or through
``importlib.import_module`` / ``__import__`` with a string that names them. Only the generated stubs in
``synchuman/v1`` import gRPC or protobuf (and the rest of the core does not import those stubs), which is what
pyproject.toml and the README say about where gRPC lives.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "synchuman"
GENERATED = CORE / "v1"
#: Top-level packages the core must never import.
OUTSIDE_THE_CORE = ("services", "gateway", "synchuman_cli", "opentelemetry")
#: What only the generated stubs may import.
WIRE_ONLY = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.protobuf", "synchuman.v1")
DYNAMIC_IMPORTERS = {"import_module", "__import__"}
#: A string that is nothing but a dotted module name (a table of modules handed to ``import_module`` later).
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _names(module: str, banned: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in banned)


def _dynamic_target(call: ast.Call) -> str | None:
    """The module string (or the constant prefix of an f-string) of an ``import_module(...)`` /
    ``__import__(...)`` call; None for other calls or a first argument with no constant prefix."""
    function = call.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
    if name not in DYNAMIC_IMPORTERS or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    if isinstance(first, ast.JoinedStr) and first.values:
        head = first.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value:
            return head.value
    return None


def _prefix_names(prefix: str, banned: tuple[str, ...]) -> bool:
    """An f-string prefix names a banned package when the finished string must start with one: a dotted
    prefix whose package part is banned, or a prefix that can only grow into a banned name."""
    if "." in prefix:
        return _names(prefix.rsplit(".", 1)[0], banned) or _names(prefix, banned)
    return any(name.startswith(prefix) for name in banned)


def imports_of(source: str, filename: str = "<source>") -> list[tuple[int, str, bool]]:
    """Every module ``source`` imports or names for a later import: ``(line, module, complete)``.

    Counted: ``import`` statements, ``import_module(...)`` / ``__import__(...)`` strings (``complete`` is
    False for the constant prefix of an f-string), and string constants that are a dotted module name and
    nothing else (``"services.stage1.main"`` in a table of modules). Relative imports stay inside the
    package, so they are left out."""
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, True))
            found += [(node.lineno, f"{node.module}.{alias.name}", True) for alias in node.names]
        elif isinstance(node, ast.Call):
            target = _dynamic_target(node)
            if target is not None:
                first = node.args[0]
                found.append((node.lineno, target, isinstance(first, ast.Constant)))
        elif isinstance(node, ast.Constant) and MODULE_NAME.fullmatch(str(node.value)):
            found.append((node.lineno, node.value, True))
    return found


def violations(source: str, banned: tuple[str, ...], filename: str = "<source>") -> list[str]:
    """``"line: module"`` for every import of a ``banned`` package (or module) in ``source``."""
    return [
        f"{line}: {module}"
        for line, module, complete in imports_of(source, filename)
        if (_names(module, banned) if complete else _prefix_names(module, banned))
    ]


def _core_modules(include_generated: bool) -> list[Path]:
    paths = sorted(CORE.rglob("*.py"))
    assert len(paths) > 50, f"found only {len(paths)} modules under {CORE}"
    return [p for p in paths if include_generated or GENERATED not in p.parents]


@pytest.mark.parametrize(
    "source",
    [
        "import services",
        "import gateway.server as server",
        "import os, synchuman_cli.main",
        "from services.launcher import TARGETS",
        "from gateway import main",
        "from synchuman_cli.commands import serve",
        "def f():\n    from services.common import endpoints\n",
        "import importlib\nimportlib.import_module('services.stage1.main')",
        "from importlib import import_module\nimport_module('gateway.main')",
        "__import__('synchuman_cli')",
        "import importlib\nname = 'x'\nimportlib.import_module(f'services.{name}.main')",
        "import importlib\nname = 'x'\nimportlib.import_module(f'gate{name}')",
        "TARGETS = {'stage1': ('services.stage1.main', 'Stage1Service')}",
    ],
)
def test_the_rule_catches_every_form(source: str) -> None:
    assert violations(source, OUTSIDE_THE_CORE), source


@pytest.mark.parametrize(
    "source",
    [
        "import synchuman.models",
        "from synchuman.pipelines import stage1",
        "from . import services",  # a relative import stays inside the package
        "import servicesx",
        "import importlib\nimportlib.import_module('synchuman.models.dinov2')",
        "import importlib\nname = 'x'\nimportlib.import_module(f'synchuman.models.{name}')",
        "import importlib\nname = 'x'\nimportlib.import_module(f'{name}.main')",  # nothing to judge
        "text = 'see services.stage1.main'",  # prose, not a module name
        '"""Docstring naming :mod:`services.launcher`."""',
    ],
)
def test_the_rule_lets_core_imports_pass(source: str) -> None:
    assert violations(source, OUTSIDE_THE_CORE) == [], source


def _offenders(banned: tuple[str, ...], include_generated: bool) -> dict[str, list[str]]:
    """Core module (relative path) -> its imports of ``banned``, for every module that has some."""
    return {
        str(path.relative_to(CORE.parent)): bad
        for path in _core_modules(include_generated)
        if (bad := violations(path.read_text(), banned, str(path)))
    }


def test_the_core_imports_no_service_gateway_or_cli() -> None:
    assert _offenders(OUTSIDE_THE_CORE, include_generated=True) == {}


def test_only_the_generated_stubs_import_grpc() -> None:
    assert _offenders(WIRE_ONLY, include_generated=False) == {}
    stubs = "\n".join(path.read_text() for path in GENERATED.glob("*_grpc.py"))
    assert violations(stubs, ("grpc",)), "the stubs import grpc: the rule would see it"

"""Print the third-party requirements of this project (core + the named extras), one per line.

    python3 docker/requirements.py pyproject.toml all  >  requirements.txt

The images' shared dependency layer installs these before any source file is copied, so editing code does
not reinstall torch and friends; only a change of pyproject.toml does. References of the project to itself
(``synchuman-serve[rpc]``) are expanded, not printed.
"""

from __future__ import annotations

import re
import sys

import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Core dependencies plus those of ``extras`` (recursively through self-references), de-duplicated."""
    project = pyproject["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    found: list[str] = []
    seen_extras: set[str] = set()

    def add(lines: list[str]) -> None:
        for line in lines:
            own = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", line.replace(" ", ""))
            if own:
                visit(own.group(1).split(","))
            elif line not in found:
                found.append(line)

    def visit(names: list[str]) -> None:
        for extra in names:
            if extra in seen_extras:
                continue
            if extra not in optional:
                raise SystemExit(f"requirements.py: {name} has no extra {extra!r} ({', '.join(optional)})")
            seen_extras.add(extra)
            add(optional[extra])

    add(project.get("dependencies", []))
    visit(extras)
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        raise SystemExit("usage: requirements.py PYPROJECT [EXTRA ...]")
    with open(argv[0], "rb") as handle:
        pyproject = tomllib.load(handle)
    print("\n".join(requirements(pyproject, argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

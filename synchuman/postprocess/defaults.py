"""Post-processing constants shared with torch-free code (options validation in services)."""

from __future__ import annotations

#: Texture bake modes and their default step counts: ``"fast"`` (splat initialisation + full-batch steps,
#: the default) and ``"opt"`` (upstream: one random view per Adam step, 1000 steps).
BAKE_STEPS: dict[str, int] = {"fast": 100, "opt": 1000}

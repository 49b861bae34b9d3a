"""Post-processing constants shared with torch-free code (options validation in services)."""

from __future__ import annotations

#: Texture bake modes and their default step counts: ``"fast"`` (splat initialisation + full-batch steps,
#: the default) and ``"opt"`` (upstream: one random view per Adam step, 1000 steps).
BAKE_STEPS: dict[str, int] = {"fast": 100, "opt": 1000}

#: Decimation ratio when neither a ratio nor a face target is asked for (upstream ``simplify=0.7``).
DEFAULT_SIMPLIFY = 0.7
#: Allowed polygon budgets (``target_faces``), inclusive.
TARGET_FACES_RANGE = (5_000, 500_000)

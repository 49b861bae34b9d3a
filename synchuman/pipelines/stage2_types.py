"""Inputs, options and outputs of the stage-2 pipeline (no torch, no gRPC: shared by the pipeline and
services).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from synchuman.postprocess.defaults import BAKE_STEPS

VIEW_SIZE = 768
CONDITIONING_SIZE = 518
NUM_VIEWS = 5

#: Extra output file names (besides "person.glb") that :class:`Stage2Options.outputs` may request.
EXTRA_OUTPUTS = ("gaussians.ply", "mesh_obj.zip")

#: ``progress(phase, step, total)``: ``step`` of ``total`` done in ``phase`` (0, 0 for a phase without steps).
Stage2Progress = Callable[[str, int, int], None]


class Stage2Cancelled(Exception):
    """``should_stop()`` returned true; the pipeline stopped between steps."""


class Stage2OutputRejected(Exception):
    """The result is useless (empty or tiny mesh, nothing left after post-processing); ``code`` is a stable
    finding code (``EMPTY_MESH``, ``TINY_MESH``) and the message says what happened and what to check."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stage2InputError(ValueError):
    """An input is malformed or unusable; ``field`` names it and the message says what to send instead."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Stage2Options:
    """Per-request options, with the upstream defaults. Ranges are checked by :meth:`validate`."""

    seed: int = 43
    steps: int = 25
    guidance_scale: float = 5.0
    texture_size: int = 1024
    simplify_ratio: float = 0.7
    bake_mode: str = "fast"  # "fast" | "opt" (upstream); see synchuman.postprocess.bake
    bake_steps: int | None = None  # None: the mode's default (fast 100, opt 1000); validate() fills it
    visibility_views: int = 1000
    outputs: tuple[str, ...] = ()

    def validate(self) -> Stage2Options:
        """Return the options with defaults resolved (``bake_steps``), or raise :class:`Stage2InputError`
        naming the first out-of-range option."""
        if self.bake_mode not in BAKE_STEPS:
            raise Stage2InputError(
                "options.bake_mode",
                f"bake_mode={self.bake_mode!r} is unknown; choose one of {sorted(BAKE_STEPS)}",
            )
        if self.bake_steps is None:
            return dataclasses.replace(self, bake_steps=BAKE_STEPS[self.bake_mode]).validate()
        checks = (
            ("seed", 0 <= self.seed < 2**63, "0 to 2^63-1"),
            ("steps", 1 <= self.steps <= 200, "1 to 200"),
            ("guidance_scale", 1.0 <= self.guidance_scale <= 20.0, "1 to 20"),
            ("texture_size", 256 <= self.texture_size <= 4096, "256 to 4096"),
            ("simplify_ratio", 0.0 <= self.simplify_ratio <= 0.99, "0 to 0.99"),
            ("bake_steps", 0 <= self.bake_steps <= 5000, "0 to 5000"),
            ("visibility_views", 8 <= self.visibility_views <= 4000, "8 to 4000"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise Stage2InputError(
                    f"options.{name}", f"{name}={getattr(self, name)} is out of range ({allowed})"
                )
        unknown = [o for o in self.outputs if o not in EXTRA_OUTPUTS]
        if unknown:
            raise Stage2InputError(
                "options.outputs", f"unknown outputs {unknown}; choose from {EXTRA_OUTPUTS}"
            )
        return self


@dataclass(frozen=True)
class Stage2Inputs:
    """What stage 1 and preprocess produced for one person.

    ``coords``: occupied voxels ``[N, 3]`` int (x, y, z) of the 64^3 grid (z up).
    ``colors`` / ``normals``: 5 views each, uint8 ``[768, 768, 3]`` (front, right, back, left, face).
    ``conditioning``: the 518x518 RGB crop, person premultiplied on black, uint8 ``[518, 518, 3]``.
    """

    coords: np.ndarray
    colors: tuple[np.ndarray, ...]
    normals: tuple[np.ndarray, ...]
    conditioning: np.ndarray

    def validate(self, resolution: int) -> Stage2Inputs:
        """Return ``self`` or raise :class:`Stage2InputError` for a wrong shape, dtype or coordinate range."""
        c = self.coords
        if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] == 0:
            raise Stage2InputError("coords", f"coords must be a non-empty [N, 3] array, got shape {c.shape}")
        if not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= resolution:
            raise Stage2InputError("coords", f"coords must be integers in [0, {resolution})")
        for name, views in (("colors", self.colors), ("normals", self.normals)):
            if len(views) != NUM_VIEWS:
                raise Stage2InputError(name, f"{name} must hold {NUM_VIEWS} views, got {len(views)}")
            for i, view in enumerate(views):
                if view.shape != (VIEW_SIZE, VIEW_SIZE, 3) or view.dtype != np.uint8:
                    raise Stage2InputError(
                        f"{name}[{i}]",
                        f"views must be uint8 [{VIEW_SIZE}, {VIEW_SIZE}, 3], got {view.dtype} {view.shape}",
                    )
        if (
            self.conditioning.shape != (CONDITIONING_SIZE, CONDITIONING_SIZE, 3)
            or self.conditioning.dtype != np.uint8
        ):
            raise Stage2InputError(
                "conditioning",
                f"conditioning must be uint8 [518, 518, 3], got {self.conditioning.dtype} "
                f"{self.conditioning.shape}",
            )
        return self


class Severity(enum.Enum):
    """How serious a quality finding is."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class QualityFinding:
    """One finding of the output checks: a stable ``code`` and a message a person can act on."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True)
class OutputReport:
    """Measurements of the finished mesh and GLB."""

    vertex_count: int
    face_count: int
    texture_coverage: float
    non_manifold_edge_fraction: float
    glb_size_bytes: int
    findings: tuple[QualityFinding, ...] = ()

    @property
    def errors(self) -> tuple[QualityFinding, ...]:
        """Findings that make the output useless."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)


@dataclass
class Stage2Result:
    """The GLB, requested extra files (name -> bytes), the output report, wall seconds per phase and (on a
    GPU) each phase's peak allocated GPU memory in GiB."""

    glb: bytes
    extra_files: dict[str, bytes]
    report: OutputReport
    phase_seconds: dict[str, float] = field(default_factory=dict)
    phase_peak_gib: dict[str, float] = field(default_factory=dict)

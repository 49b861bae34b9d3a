"""Options, progress, errors and outputs of the stage-2 pipeline (no torch, no gRPC: shared by the pipeline
and the services). Its inputs are :class:`synchuman.pipelines.handoff.Stage2Inputs`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from synchuman.options import (
    GUIDANCE_RANGE,
    SEED_RANGE,
    STEPS_RANGE,
    OptionError,
    Range,
    check_ranges,
)
from synchuman.postprocess.defaults import BAKE_STEPS

if TYPE_CHECKING:
    from synchuman.models.flexicubes import Mesh
    from synchuman.models.gaussians import Gaussians

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

    #: The allowed ranges (inclusive); ``bake_mode`` and ``outputs`` are checked against their names.
    RANGES: ClassVar[tuple[Range, ...]] = (
        SEED_RANGE,
        STEPS_RANGE,
        GUIDANCE_RANGE,
        ("texture_size", 256, 4096, "256 to 4096"),
        ("simplify_ratio", 0.0, 0.99, "0 to 0.99"),
        ("bake_steps", 0, 5000, "0 to 5000"),
        ("visibility_views", 8, 4000, "8 to 4000"),
    )

    def validate(self) -> Stage2Options:
        """Return the options with defaults resolved (``bake_steps``), or raise
        :class:`~synchuman.options.OptionError` naming the first out-of-range option."""
        if self.bake_mode not in BAKE_STEPS:
            raise OptionError(
                "bake_mode", f"bake_mode={self.bake_mode!r} is unknown; choose one of {sorted(BAKE_STEPS)}"
            )
        if self.bake_steps is None:
            return dataclasses.replace(self, bake_steps=BAKE_STEPS[self.bake_mode]).validate()
        check_ranges(self, self.RANGES)
        unknown = [o for o in self.outputs if o not in EXTRA_OUTPUTS]
        if unknown:
            raise OptionError("outputs", f"unknown outputs {unknown}; choose from {EXTRA_OUTPUTS}")
        return self


#: Defaults of a stage-2 pipeline on a CPU: upstream's 1000 visibility views and 1024^2 texture take hours
#: there (the visibility views alone outlast a 30-minute stage deadline); 64 views and a 512^2 texture finish
#: a job in minutes. A request's own values still apply.
CPU_DEFAULTS = Stage2Options(visibility_views=64, texture_size=512)
#: Visibility render size in pixels by device type (upstream 1024^2; the CPU rasteriser renders 256^2).
VISIBILITY_RESOLUTION = {"cuda": 1024, "cpu": 256}


def device_defaults(device_type: str) -> Stage2Options:
    """The options a request's unset fields take on a ``device_type`` ("cuda", "cpu", ...) pipeline."""
    return CPU_DEFAULTS if device_type == "cpu" else Stage2Options()


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
    GPU) each phase's peak allocated GPU memory in GiB.

    ``mesh`` / ``gaussians``: the decoded geometry before post-processing (on the pipeline's device), kept
    only when asked for (``Stage2Pipeline.run(..., keep_geometry=True)``), else ``None``.
    """

    glb: bytes
    extra_files: dict[str, bytes]
    report: OutputReport
    phase_seconds: dict[str, float] = field(default_factory=dict)
    phase_peak_gib: dict[str, float] = field(default_factory=dict)
    mesh: Mesh | None = None
    gaussians: Gaussians | None = None

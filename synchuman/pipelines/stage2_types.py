"""Device defaults, progress, errors and outputs of the stage-2 pipeline (no torch, no gRPC: shared by the
pipeline and the services). Its inputs are :class:`synchuman.pipelines.handoff.Stage2Inputs`, its options
:class:`synchuman.options.Stage2Options`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from synchuman.options import Stage2Options

if TYPE_CHECKING:
    from synchuman.models.flexicubes import Mesh
    from synchuman.models.gaussians import Gaussians

class Stage2Cancelled(Exception):
    """``should_stop()`` returned true; the pipeline stopped between steps."""


class Stage2OutputRejected(Exception):
    """The result is useless (empty or tiny mesh, nothing left after post-processing); ``code`` is a stable
    finding code (``EMPTY_MESH``, ``TINY_MESH``) and the message says what happened and what to check."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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

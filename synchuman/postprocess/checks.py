"""Output checks for the field's failure modes (empty/tiny mesh, unreached texture, non-manifold geometry)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synchuman.geometry.mesh_graph import non_manifold_edge_share


class PostprocessError(ValueError):
    """The input or the result is unusable; the message says what was wrong and what to do."""


@dataclass
class Check:
    """One check: ``name``, measured ``value``, the ``limit``, ``ok``, ``severity`` ('error'/'warning'),
    message."""

    name: str
    value: float
    limit: float
    ok: bool
    severity: str
    message: str


@dataclass(frozen=True)
class CheckLimits:
    """Thresholds. Errors: fewer than ``min_faces`` faces or an extent below ``min_extent`` (box units).
    Warnings: texture coverage below ``min_coverage``, non-manifold edge share above ``max_non_manifold``."""

    min_faces: int = 500
    min_extent: float = 0.1
    min_coverage: float = 0.6
    max_non_manifold: float = 0.01


def check_input_mesh(vertices: torch.Tensor, faces: torch.Tensor, limits: CheckLimits) -> list[Check]:
    """Reject empty or tiny meshes before any work (an almost empty mask upstream gave a ~5 KB GLB)."""
    num_faces = int(faces.shape[0])
    if num_faces == 0 or vertices.shape[0] == 0:
        raise PostprocessError(
            "the decoded mesh is empty: the person mask or the sparse structure is probably "
            "empty; check the input photo's subject and segmentation"
        )
    extent = float((vertices.amax(0) - vertices.amin(0)).max())
    checks = [
        Check(
            "faces",
            num_faces,
            limits.min_faces,
            num_faces >= limits.min_faces,
            "error",
            f"mesh has {num_faces} faces (< {limits.min_faces}): decoding produced almost nothing",
        ),
        Check(
            "extent",
            extent,
            limits.min_extent,
            extent >= limits.min_extent,
            "error",
            f"mesh extent {extent:.3f} (< {limits.min_extent}): the object is a speck, not a person",
        ),
    ]
    raise_errors(checks)
    return checks


def check_output(faces: np.ndarray, coverage: float, limits: CheckLimits) -> list[Check]:
    """Checks of the finished mesh: face count (error), texture coverage and non-manifold share (warnings)."""
    num_faces = len(faces)
    share = non_manifold_edge_share(torch.from_numpy(np.asarray(faces, dtype=np.int64))) if num_faces else 0.0
    checks = [
        Check(
            "faces_out",
            num_faces,
            limits.min_faces,
            num_faces >= limits.min_faces,
            "error",
            f"post-processing left {num_faces} faces (< {limits.min_faces}); the interior removal or "
            "decimation destroyed the mesh",
        ),
        Check(
            "texture_coverage",
            coverage,
            limits.min_coverage,
            coverage >= limits.min_coverage,
            "warning",
            f"only {coverage:.0%} of the texture was seen by a view; the rest is filled in",
        ),
        Check(
            "non_manifold_edges",
            share,
            limits.max_non_manifold,
            share <= limits.max_non_manifold,
            "warning",
            f"{share:.2%} of the edges are non-manifold",
        ),
    ]
    raise_errors(checks)
    return checks


def raise_errors(checks: list[Check]) -> None:
    """Raise :class:`PostprocessError` listing every failed error-severity check."""
    failed = [c.message for c in checks if not c.ok and c.severity == "error"]
    if failed:
        raise PostprocessError("; ".join(failed))

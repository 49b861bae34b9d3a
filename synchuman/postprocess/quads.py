"""Quad remesh with Instant Meshes (``pyinstantmeshes``, BSD-3-Clause) and the triangulation the atlas, the
bake and the GLB use.

Instant Meshes runs in a child Python process: its C++ core prints its progress to the process's stdout (which
a server's logs must not get), writes its result only as a file with the polygons intact (the binding's
in-memory result is re-triangulated), and a crash there must not take the stage down. It is asked for a pure
quad mesh (every face a quad: the quad-dominant extraction, then one regular subdivision), so it is asked for
a quarter of the wanted faces.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synchuman.postprocess import checks as checks_mod

log = logging.getLogger(__name__)

#: The child process: ``remesh_file(input PLY, output OBJ, target faces)``, pure quads, deterministic.
_CHILD = (
    "import sys, pyinstantmeshes as im; "
    "im.remesh_file(sys.argv[1], sys.argv[2], target_face_count=int(sys.argv[3]), pure_quad=True, "
    "deterministic=True)"
)
#: Fewest quads, as a share of the wanted count, that make a usable remesh (fewer: Instant Meshes dropped
#: most of a fragmented surface, e.g. the noise random weights decode).
MIN_QUAD_SHARE = 0.5
#: Check name (finding code ``QUAD_REMESH_FAILED``) of a remesh that was not used.
QUAD_REMESH_CHECK = "quad_remesh_failed"
#: Longest a remesh may take (seconds); Instant Meshes needs ~20 s for 80k quads on 2 CPU cores.
REMESH_TIMEOUT_S = 900.0


class QuadRemeshError(RuntimeError):
    """Instant Meshes failed or gave no faces; the message holds the end of its log."""


@dataclass
class QuadMesh:
    """A quad mesh.

    Attributes:
        vertices: ``[V, 3]`` float32 (same space as the input, z-up in the ``[-0.5, 0.5]`` box).
        quads: ``[Q, 4]`` int64 corner indices, counter-clockwise seen from outside (as the input's
            triangles).
    """

    vertices: np.ndarray
    quads: np.ndarray


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY of a triangle mesh (``vertices [V, 3]``, ``faces [F, 3]``)."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    face_rows = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face_rows["n"] = 3
    face_rows["i"] = faces
    with path.open("wb") as out:
        out.write(header.encode())
        out.write(np.ascontiguousarray(vertices, dtype="<f4").tobytes())
        out.write(face_rows.tobytes())


def read_obj_polygons(path: Path) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices ``[V, 3]`` float32 and faces (0-based corner lists) of an OBJ file (``v`` and ``f`` lines)."""
    vertices: list[list[float]] = []
    faces: list[list[int]] = []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            vertices.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            faces.append([int(token.split("/")[0]) - 1 for token in line.split()[1:]])
    return np.asarray(vertices, dtype=np.float32).reshape(-1, 3), faces


def remesh(vertices: np.ndarray, faces: np.ndarray, target_quads: int) -> QuadMesh:
    """Pure quad remesh of a triangle mesh to about ``target_quads`` quads.

    Args:
        vertices: ``[V, 3]`` float; faces: ``[F, 3]`` int.
        target_quads: wanted quads (Instant Meshes reaches it within a few per cent).
    Returns:
        The :class:`QuadMesh`; any face that is not a quad (none in pure quad mode) is dropped and logged.
    Raises:
        QuadRemeshError: the remesher failed, timed out or returned nothing.
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synchuman-quads-") as folder:
        source, result = Path(folder) / "in.ply", Path(folder) / "out.obj"
        write_ply(source, vertices, faces)
        request = max(1, round(target_quads / 4))  # the pure-quad subdivision makes each face 4 quads
        try:
            run = subprocess.run(
                [sys.executable, "-c", _CHILD, str(source), str(result), str(request)],
                capture_output=True,
                text=True,
                timeout=REMESH_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise QuadRemeshError(f"Instant Meshes took over {REMESH_TIMEOUT_S:.0f} s") from exc
        if run.returncode != 0 or not result.exists():
            tail = (run.stdout + run.stderr)[-2000:]
            raise QuadRemeshError(f"Instant Meshes failed (exit {run.returncode}): {tail}")
        out_vertices, polygons = read_obj_polygons(result)
    quads = np.asarray([p for p in polygons if len(p) == 4], dtype=np.int64).reshape(-1, 4)
    if len(quads) == 0:
        raise QuadRemeshError("Instant Meshes returned no quads")
    log.info(
        "quad remesh",
        extra={
            "faces_in": int(len(faces)),
            "target_quads": int(target_quads),
            "quads": int(len(quads)),
            "dropped_non_quads": len(polygons) - len(quads),
            "seconds": round(time.monotonic() - start, 3),
        },
    )
    return QuadMesh(out_vertices, quads)


def triangulate(quads: np.ndarray) -> np.ndarray:
    """Triangles ``[2Q, 3]`` of quads ``[Q, 4]``: quad ``q`` -> triangles ``2q`` ``(a, b, c)`` and ``2q + 1``
    ``(a, c, d)`` (same orientation)."""
    quads = np.asarray(quads, dtype=np.int64)
    first = quads[:, [0, 1, 2]]
    second = quads[:, [0, 2, 3]]
    return np.stack([first, second], axis=1).reshape(-1, 3)


def remesh_or_none(
    vertices: np.ndarray, faces: np.ndarray, target_quads: int, checks: list[checks_mod.Check]
) -> QuadMesh | None:
    """:func:`remesh`, or ``None`` with a failed warning check :data:`QUAD_REMESH_CHECK` appended to
    ``checks`` when it fails or keeps under :data:`MIN_QUAD_SHARE` of ``target_quads`` (the caller then
    goes on with the triangles)."""
    try:
        result = remesh(vertices, faces, target_quads)
        reason = f"it gave {len(result.quads)} of {target_quads} quads (the surface is fragmented)"
        if len(result.quads) >= MIN_QUAD_SHARE * target_quads:
            return result
    except QuadRemeshError as exc:
        reason = str(exc)[:300]
    log.warning("quad remesh not used", extra={"reason": reason, "target_quads": int(target_quads)})
    checks.append(
        checks_mod.Check(
            QUAD_REMESH_CHECK,
            0,
            target_quads,
            False,
            "warning",
            f"the quad remesh was not used: {reason}; the mesh stays triangles",
        )
    )
    return None

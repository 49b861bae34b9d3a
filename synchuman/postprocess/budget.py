"""How many faces the post-processing works on and delivers: a decimation ratio (``simplify``) or a polygon
budget (``target_faces``), plus the cap on the faces the expensive phases work on (``max_working_faces``).

With a budget the mesh is first decimated to :data:`WORKING_MARGIN` times the target (twice that for a quad
remesh, which needs a finer input than its result), the hidden faces are removed, and then the result is
decimated to exactly the target (:func:`meet_target`): the cut and the hole fill change the face count, so
only a decimation after them can deliver the budget.
"""

from __future__ import annotations

import math

import numpy as np

from synchuman.options import PostprocessOptions
from synchuman.postprocess import checks as checks_mod
from synchuman.postprocess.decimate import decimate_to_count

#: Working faces per target face before the hidden-face removal (room for the faces the cut removes).
WORKING_MARGIN = 1.25
#: Largest relative miss of the polygon budget that still counts as met.
TARGET_TOLERANCE = 0.02
#: Check name (finding code ``FACE_TARGET_UNREACHED``) of a surface with fewer faces than the budget.
FACE_TARGET_CHECK = "face_target_unreached"


def working_ratio(faces_in: int, options: PostprocessOptions, checks: list[checks_mod.Check]) -> float:
    """The first decimation's ratio (fraction of ``faces_in`` removed).

    Budget: ``faces_in`` down to ``WORKING_MARGIN * target_faces`` (x2 with ``quad_remesh``), nothing when
    the mesh has fewer. Ratio: ``options.simplify`` (0.7 unset), or more when that would keep over
    ``options.max_working_faces``; then a failed warning check ``"dense_mesh"`` (finding ``DENSE_MESH``) is
    appended to ``checks``.
    """
    if options.target_faces is not None:
        working = WORKING_MARGIN * options.target_faces * (2 if options.quad_remesh else 1)
        return max(0.0, 1.0 - working / faces_in)
    simplify = options.decimation
    cap = options.max_working_faces
    kept = faces_in * (1 - simplify)
    if cap <= 0 or kept <= cap:
        return simplify
    checks.append(
        checks_mod.Check(
            "dense_mesh",
            round(kept),
            cap,
            False,
            "warning",
            f"the decoded mesh has {faces_in} faces, {round(kept)} after simplify {simplify:g}: "
            f"decimated to {cap} instead (max_working_faces) to bound post-processing time and GPU memory; "
            "such dense meshes are usually noise (random or mismatched weights)",
        )
    )
    return 1 - cap / faces_in


def meet_target(
    vertices: np.ndarray, faces: np.ndarray, target: int, checks: list[checks_mod.Check]
) -> tuple[np.ndarray, np.ndarray]:
    """Decimate ``(vertices [V, 3], faces [F, 3])`` to ``target`` faces.

    A mesh with fewer faces than ``target * (1 - TARGET_TOLERANCE)`` is kept as it is and a failed info
    check :data:`FACE_TARGET_CHECK` is appended to ``checks`` (finding ``FACE_TARGET_UNREACHED``).
    Returns ``(vertices float32, faces int64)``.
    """
    if len(faces) > target:
        vertices, faces = decimate_to_count(vertices, faces, target)
    reached = len(faces) >= math.ceil(target * (1 - TARGET_TOLERANCE))
    if not reached:
        checks.append(
            checks_mod.Check(
                FACE_TARGET_CHECK,
                len(faces),
                target,
                False,
                "info",
                f"the surface has {len(faces)} faces after the hidden-face removal, fewer than "
                f"target_faces={target}: all of them are kept (a budget only removes faces)",
            )
        )
    return np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64)


def visibility_resolution(options: PostprocessOptions, working_faces: int) -> int:
    """The visibility render size for ``working_faces`` faces under a budget: at least
    ``options.visibility_resolution``, and at least ``2^ceil(log2(sqrt(4 * faces)))`` pixels (about four
    pixels of a view per face), up to 2048. A face no view's pixel centre hits counts as hidden and the cut
    removes it: on the 241,812-face body decimated to 125,000 faces, 64 views at 256^2 left 11,732 faces.
    Without a budget the option is used as it is."""
    if options.target_faces is None:
        return options.visibility_resolution
    needed = 2 ** math.ceil(math.log2(math.sqrt(4 * max(1, working_faces))))
    return max(options.visibility_resolution, min(2048, needed))


def quad_target(options: PostprocessOptions, faces: int) -> int:
    """Quads the remesh is asked for: ``target_faces``, else half the triangles (the GLB then keeps about
    as many triangles as without the remesh)."""
    return options.target_faces if options.target_faces is not None else max(1, faces // 2)

"""Skin weights by bone-heat diffusion (Baran & Popovic 2007, "Automatic rigging and animation of 3D
characters"), on a welded copy of the mesh.

Per bone ``j`` the weights ``w_j`` (one per vertex) solve ``(-L + M H) w_j = M H p_j``: ``L`` the cotangent
Laplacian, ``M`` the lumped (barycentric) vertex areas, ``H = diag(1 / d_i^2)`` with ``d_i`` the distance of
vertex ``i`` to its nearest *visible* bone (the segment from the vertex to the bone's nearest point stays
inside the body: sampled on a voxel grid of the inside), and ``p_j[i] = 1`` when that bone is ``j``. One
sparse LU factorisation serves every bone. Then: weights clipped to ``[0, 1]``; no vertex keeps weight on a
limb of the other side (its side is its nearest visible bone's, or for a trunk vertex the side of the body's
midplane it lies on); the 4 largest kept, normalised to sum 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from synchuman.rig import raycast, skeleton
from synchuman.rig.joints import RigFailure

#: Influences kept per vertex (glTF's one JOINTS_0/WEIGHTS_0 set).
MAX_INFLUENCES = 4
#: Voxel edge of the visibility grid, as a share of the mesh's largest extent (about its height).
CELL_SHARE = 1 / 160
#: Samples along each vertex-to-bone segment in the visibility test.
SEGMENT_SAMPLES = 16
#: Nearest bones tried, in distance order, for each vertex's nearest visible bone.
CANDIDATES = 4
#: Largest magnitude of a cotangent weight (sliver triangles).
MAX_COT = 1e4
#: Vertices processed per block (bounds the memory of the distance and visibility arrays).
BLOCK = 8192


def weld(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge vertices at identical positions (a UV atlas splits the mesh along its seams): welded vertices
    ``[W, 3]``, faces ``[F, 3]`` on them, and ``index [V]`` of each input vertex's welded vertex."""
    welded, index = np.unique(np.asarray(vertices, dtype=np.float64), axis=0, return_inverse=True)
    index = index.reshape(-1)
    return welded, index[faces], index


def cotangent_laplacian(vertices: np.ndarray, faces: np.ndarray) -> tuple[sp.csc_matrix, np.ndarray]:
    """Cotangent Laplacian ``L [V, V]`` (``L_ij = (cot a + cot b) / 2``, rows summing to 0, negative
    semi-definite) and lumped vertex areas ``[V]`` (a third of each adjacent triangle's area)."""
    v = vertices[faces]  # [F, 3 corners, 3]
    num = len(vertices)
    rows, cols, vals = [], [], []
    for k in range(3):
        i, j, o = (k + 1) % 3, (k + 2) % 3, k  # the edge (i, j) opposite corner o
        a, b = v[:, i] - v[:, o], v[:, j] - v[:, o]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        # a degenerate (zero-area) triangle adds nothing; slivers are capped (standard robustness measure)
        dot = (a * b).sum(1)
        valid = cross > 1e-12 * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cot = np.where(valid, np.clip(dot / np.where(valid, cross, 1.0), -MAX_COT, MAX_COT), 0.0)
        rows += [faces[:, i], faces[:, j]]
        cols += [faces[:, j], faces[:, i]]
        vals += [cot / 2, cot / 2]
    off = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(num, num)
    )
    laplacian = off - sp.diags(np.asarray(off.sum(axis=1)).reshape(-1))
    area = np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1) / 2
    mass = np.bincount(faces.reshape(-1), np.repeat(area / 3, 3), minlength=num)
    return laplacian.tocsc(), mass


def segment_points(points: np.ndarray, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """Nearest points ``[N, J, 3]`` on the bone segments (``heads``/``tails [J, 3]``) to ``points [N, 3]``."""
    axis = tails - heads
    t = ((points[:, None] - heads[None]) * axis[None]).sum(-1) / np.maximum((axis * axis).sum(-1), 1e-20)
    return heads[None] + np.clip(t, 0, 1)[..., None] * axis[None]


def nearest_visible_bone(
    vertices: np.ndarray,
    heads: np.ndarray,
    tails: np.ndarray,
    grid: raycast.Occupancy,
    check: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray]:
    """For every vertex: the nearest bone segment (``heads``/``tails [S, 3]``) whose segment to it stays
    inside (``[V]`` segment index, the nearest of all when none of the :data:`CANDIDATES` nearest is visible)
    and the distance to it ``[V]``."""
    bone = np.empty(len(vertices), dtype=np.int64)
    dist = np.empty(len(vertices))
    t = np.linspace(0, 1, SEGMENT_SAMPLES + 1)[1:]
    count = min(CANDIDATES, len(heads))
    for start in range(0, len(vertices), BLOCK):
        check()
        p = vertices[start : start + BLOCK]
        near = segment_points(p, heads, tails)  # [N, S, 3]
        d = np.linalg.norm(near - p[:, None], axis=-1)
        order = np.argpartition(d, count - 1, axis=1)[:, :count]
        order = np.take_along_axis(order, np.argsort(np.take_along_axis(d, order, 1), axis=1), 1)
        chosen = order[:, 0].copy()
        todo = np.arange(len(p))  # vertices without a visible bone yet
        for c in range(count):
            j = order[todo, c]
            q = near[todo, j]
            length = d[todo, j]
            # samples from the vertex to the bone, skipping the vertex's own surface layer (1.5 voxels)
            skip = np.minimum(1.5 * grid.cell / np.maximum(length, 1e-12), 1.0)
            s = skip[:, None] + (1 - skip[:, None]) * t[None]
            samples = p[todo, None] + s[..., None] * (q - p[todo])[:, None]
            visible = grid.lookup(samples).all(axis=1)
            chosen[todo[visible]] = j[visible]
            todo = todo[~visible]
            if not len(todo):
                break
        bone[start : start + len(p)] = chosen
        dist[start : start + len(p)] = d[np.arange(len(p)), chosen]
    return bone, dist


def _sides(vertices: np.ndarray, bone: np.ndarray, joints: dict[str, np.ndarray]) -> np.ndarray:
    """Side ``[V]`` (+1 left, -1 right) of every vertex: its nearest visible bone's, or for a trunk bone the
    side of the midplane through the hips, normal to the right-to-left upper-leg line, it lies on."""
    bone_side = np.array([skeleton.side(name) for name in skeleton.JOINTS])
    lateral = joints["leftUpperLeg"] - joints["rightUpperLeg"]
    lateral = lateral / max(np.linalg.norm(lateral), 1e-12)
    offset = (vertices - joints["hips"]) @ lateral
    side = bone_side[bone]
    return np.where(side != 0, side, np.where(offset >= 0, 1, -1))


def top_influences(weights: np.ndarray, count: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest weights per vertex, normalised in float32 to sum 1: joint indices ``[V, count]``
    uint16 (0 where the weight is 0) and weights ``[V, count]`` float32, largest first."""
    order = np.argsort(-weights, axis=1)[:, :count]
    kept = np.take_along_axis(weights, order, axis=1).astype(np.float64)
    total = kept.sum(1, keepdims=True)
    kept = np.where(total > 0, kept / np.where(total > 0, total, 1), np.eye(count)[0])
    kept = kept.astype(np.float32)
    kept[:, 0] += np.float32(1) - kept.sum(1, dtype=np.float32)  # the float32 sum is exactly 1 (or 1 ulp off)
    index = np.where(kept > 0, order, 0).astype(np.uint16)
    return index, kept


def bone_heat(
    vertices: np.ndarray,
    faces: np.ndarray,
    joints: dict[str, np.ndarray],
    check: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, np.ndarray]:
    """Skin weights of the mesh ``vertices [V, 3]``, ``faces [F, 3]`` for the skeleton ``joints`` (joint and
    bone-end positions, same frame and units as the vertices): joint indices ``[V, 4]`` uint16 into
    :data:`~.skeleton.JOINTS` and weights ``[V, 4]`` float32 summing to 1. ``check()`` is called between the
    steps and blocks (it raises to stop). :class:`~.joints.RigFailure` when the heat system has no
    solution."""
    welded, wfaces, index = weld(vertices, faces)
    heads, tails, owner = skeleton.bones(joints)
    extent = float(np.ptp(welded, axis=0).max()) if len(welded) else 1.0
    check()
    triangles = welded[wfaces]
    grid = raycast.occupancy(triangles, max(extent * CELL_SHARE, 1e-6))
    check()
    segment, dist = nearest_visible_bone(welded, heads, tails, grid, check)
    bone = owner[segment]
    laplacian, mass = cotangent_laplacian(welded, wfaces)
    # every vertex gets some heat (an unreferenced vertex has no area): the system is positive definite
    heat = np.maximum(mass, 1e-30) / np.maximum(dist, 1e-3 * extent) ** 2
    check()
    system = (-laplacian + sp.diags(heat)).tocsc()
    try:
        solve = spla.splu(system)  # COLAMD: MMD on A^T + A took 100x longer on a 36k-vertex body
    except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
        raise RigFailure(f"the skin weights have no solution on this mesh ({exc}); no rig was made") from exc
    check()
    num_bones = len(skeleton.JOINTS)
    rhs = np.zeros((len(welded), num_bones))
    rhs[np.arange(len(welded)), bone] = heat
    weights = solve.solve(rhs)  # every bone at once (~0.3 s for a 36k-vertex body)
    if not np.isfinite(weights).all():
        raise RigFailure("the skin weights came out non-finite (a degenerate mesh); no rig was made")
    weights = np.clip(weights, 0.0, 1.0)
    bone_side = np.array([skeleton.side(name) for name in skeleton.JOINTS])
    sides = _sides(welded, bone, joints)
    weights[(bone_side[None] != 0) & (bone_side[None] != sides[:, None])] = 0.0
    # a vertex whose weights all vanished (far off every bone of its side) follows its nearest visible bone
    empty = weights.sum(1) <= 1e-12
    weights[empty, bone[empty]] = 1.0
    joint_index, joint_weight = top_influences(weights)
    return joint_index[index], joint_weight[index]

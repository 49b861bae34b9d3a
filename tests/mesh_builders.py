"""Meshes the post-processing tests and bench build (marching cubes of capsules and spheres; boxes)."""

from __future__ import annotations

import numpy as np

# (start, end, radius) capsules of a standing person in the [-0.5, 0.5] box, z up
_BODY_CAPSULES = (
    ((0.0, 0.0, -0.02), (0.0, 0.0, 0.22), 0.11),  # torso
    ((-0.06, 0.0, -0.05), (-0.07, 0.0, -0.44), 0.05),  # legs
    ((0.06, 0.0, -0.05), (0.07, 0.0, -0.44), 0.05),
    ((-0.13, 0.0, 0.24), (-0.32, 0.0, 0.02), 0.035),  # arms
    ((0.13, 0.0, 0.24), (0.32, 0.0, 0.02), 0.035),
    ((0.0, 0.0, 0.26), (0.0, 0.0, 0.31), 0.04),  # neck
)
_HEAD = ((0.0, 0.0, 0.38), 0.075)


def _capsule_sdf(points: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1) - radius


def body_mesh(resolution: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes person of capsules and a sphere head: ``(vertices [V, 3] float32, faces [F, 3] int64)``.

    About ``2 * resolution^2`` triangles (~4.5k at 48, ~230k at ~340).
    """
    from skimage.measure import marching_cubes

    axis = np.linspace(-0.5, 0.5, resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    sdf = np.linalg.norm(grid - np.array(_HEAD[0]), axis=-1) - _HEAD[1]
    for a, b, r in _BODY_CAPSULES:
        sdf = np.minimum(sdf, _capsule_sdf(grid, np.array(a), np.array(b), r))
    verts, faces, _, _ = marching_cubes(sdf, 0.0)
    verts = verts / (resolution - 1) - 0.5
    return verts.astype(np.float32), faces.astype(np.int64)


def box_mesh(half: float, subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned closed cube of half-size ``half``, each face split into ``2 * n^2`` triangles."""
    n = subdivisions
    verts, faces = [], []
    g = np.linspace(-half, half, n + 1)
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u, v = np.meshgrid(g, g, indexing="ij")
            p = np.zeros((n + 1, n + 1, 3))
            others = [i for i in range(3) if i != axis]
            p[..., axis] = sign * half
            p[..., others[0]], p[..., others[1]] = u, v
            base = sum(len(x) for x in verts)
            verts.append(p.reshape(-1, 3))
            idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1) + base
            a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
            quads = np.stack([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], 0).reshape(-1, 3)
            faces.append(quads if sign > 0 else quads[:, ::-1])
    verts_all = np.concatenate(verts)
    faces_all = np.concatenate(faces)
    uniq, inverse = np.unique(np.round(verts_all, 6), axis=0, return_inverse=True)
    return uniq.astype(np.float32), inverse.reshape(-1)[faces_all].astype(np.int64)

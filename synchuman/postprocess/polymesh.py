"""The textured polygon mesh the OBJ and USD outputs are written from: welded positions, per-corner UVs, and
faces of 3 or 4 corners (quads rebuilt from the triangle pairs the atlas and the bake worked on).

The UV atlas (:mod:`synchuman.postprocess.uv_atlas`) splits vertices along chart seams and works on
triangles; a quad survives as a quad when both of its triangles lie in one chart (its shared corners have the
same atlas vertex), else it is written as its two triangles (its UVs would jump across the seam otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synchuman.postprocess.uv_atlas import Atlas


@dataclass
class PolyMesh:
    """A textured polygon mesh.

    Attributes:
        positions: ``[P, 3]`` float32 welded vertex positions (z-up, box units).
        uvs: ``[T, 2]`` float32 texture coordinates in ``[0, 1]`` (v up).
        counts: ``[F]`` int32 corners per face (3 or 4).
        corner_positions: ``[sum(counts)]`` int32 index into ``positions`` of every face corner, face by face.
        corner_uvs: ``[sum(counts)]`` int32 index into ``uvs`` of every face corner.
    """

    positions: np.ndarray
    uvs: np.ndarray
    counts: np.ndarray
    corner_positions: np.ndarray
    corner_uvs: np.ndarray

    @property
    def quad_fraction(self) -> float:
        """Share of the faces that are quads (0 for an empty mesh)."""
        return float(np.mean(self.counts == 4)) if len(self.counts) else 0.0


def from_atlas(atlas: Atlas, positions: np.ndarray, quad_pairs: bool) -> PolyMesh:
    """The polygon mesh of a parametrised mesh.

    Args:
        atlas: the atlas of the triangles; ``atlas.vertex_map`` indexes ``positions``.
        positions: ``[P, 3]`` the welded vertices the atlas was made from.
        quad_pairs: triangles ``2q`` and ``2q + 1`` are quad ``q`` split as
            :func:`~synchuman.postprocess.quads.triangulate` does; each pair becomes one quad when it lies in
            one chart.
    """
    faces = np.asarray(atlas.faces, dtype=np.int64)
    if not quad_pairs:
        counts = np.full(len(faces), 3, dtype=np.int32)
        corners = faces.reshape(-1)
    else:
        first, second = faces[0::2], faces[1::2]  # (a, b, c) and (a, c, d) in atlas vertices
        whole = (first[:, 0] == second[:, 0]) & (first[:, 2] == second[:, 1])
        quads = np.concatenate([first[whole], second[whole][:, 2:]], axis=1)
        split = np.stack([first[~whole], second[~whole]], axis=1).reshape(-1, 3)
        counts = np.concatenate(
            [np.full(len(quads), 4, dtype=np.int32), np.full(len(split), 3, dtype=np.int32)]
        )
        corners = np.concatenate([quads.reshape(-1), split.reshape(-1)])
    return PolyMesh(
        positions=np.asarray(positions, dtype=np.float32),
        uvs=np.asarray(atlas.uvs, dtype=np.float32),
        counts=counts,
        corner_positions=atlas.vertex_map[corners].astype(np.int32),
        corner_uvs=corners.astype(np.int32),
    )

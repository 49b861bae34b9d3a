"""Axis-aligned ray casting against a triangle mesh in numpy: surface crossings along a line, inside tests by
ray parity, and a voxel grid of the inside (scanlines along z).

An axis-aligned ray reduces to a 2-D point-in-triangle test in the plane of the two other axes plus one
interpolated coordinate, so no acceleration structure is needed for the few dozen rays a rig casts; the
occupancy grid enumerates, per triangle, the grid columns its projection covers (triangles are small).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A tiny offset of the query lines off the grid of vertex coordinates (no ray through an edge or vertex).
_JITTER = np.array([1.37e-7, -2.91e-7, 4.03e-7])


@dataclass(frozen=True)
class Triangles:
    """A triangle soup with its per-triangle bounds, for many line queries.

    Attributes:
        corners: ``[F, 3, 3]`` float64 (triangle, corner, xyz); lo / hi: ``[F, 3]`` per-triangle bounds.
    """

    corners: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, corners: np.ndarray) -> Triangles:
        corners = np.asarray(corners, dtype=np.float64)
        return cls(corners, corners.min(axis=1), corners.max(axis=1))


def line_hits(triangles: Triangles, point: np.ndarray, axis: int) -> np.ndarray:
    """Sorted coordinates along ``axis`` where the line through ``point [3]`` parallel to that axis crosses
    the surface of ``triangles`` (any units)."""
    a, b = [i for i in range(3) if i != axis]
    p = np.asarray(point, dtype=np.float64) + _JITTER
    lo, hi = triangles.lo, triangles.hi
    near = (lo[:, a] <= p[a]) & (hi[:, a] >= p[a]) & (lo[:, b] <= p[b]) & (hi[:, b] >= p[b])
    tri = triangles.corners[near]
    if not len(tri):
        return np.zeros(0)
    x, y = tri[:, :, a] - p[a], tri[:, :, b] - p[b]
    # signed areas of the sub-triangles opposite each corner (barycentrics up to a common factor)
    w0 = x[:, 1] * y[:, 2] - x[:, 2] * y[:, 1]
    w1 = x[:, 2] * y[:, 0] - x[:, 0] * y[:, 2]
    w2 = x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]
    inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))
    total = w0 + w1 + w2
    inside &= np.abs(total) > 1e-18
    w = np.stack([w0, w1, w2], 1)[inside] / total[inside, None]
    return np.sort((w * tri[inside][:, :, axis]).sum(1))


def intervals(hits: np.ndarray) -> np.ndarray:
    """Inside stretches ``[K, 2]`` (entry, exit) of sorted crossings (pairs; an unpaired last one dropped)."""
    count = len(hits) // 2 * 2
    return hits[:count].reshape(-1, 2)


def is_inside(triangles: Triangles, point: np.ndarray) -> bool:
    """Whether ``point`` is inside the surface: odd crossing counts on the + side along at least 2 of 3 axes
    (a majority, so one stray crossing of a not quite closed mesh does not decide)."""
    votes = 0
    for axis in range(3):
        hits = line_hits(triangles, point, axis)
        votes += int((hits > point[axis] + _JITTER[axis]).sum() % 2 == 1)
    return votes >= 2


@dataclass(frozen=True)
class Occupancy:
    """Voxel grid of a mesh's inside: cell ``(i, j, k)`` has its centre at ``origin + (ijk + 0.5) * cell``.

    Attributes:
        inside: bool ``[X, Y, Z]``; origin: ``[3]``; cell: edge length (model units).
    """

    inside: np.ndarray
    origin: np.ndarray
    cell: float

    def lookup(self, points: np.ndarray) -> np.ndarray:
        """Whether points ``[..., 3]`` lie in inside cells (False outside the grid)."""
        ijk = np.floor((points - self.origin) / self.cell).astype(np.int64)
        shape = np.array(self.inside.shape)
        ok = np.all((ijk >= 0) & (ijk < shape), axis=-1)
        ijk = np.clip(ijk, 0, shape - 1)
        return ok & self.inside[ijk[..., 0], ijk[..., 1], ijk[..., 2]]


def occupancy(triangles: np.ndarray, cell: float) -> Occupancy:
    """Inside cells of the closed surface ``triangles [F, 3, 3]`` on a grid of ``cell``-sized voxels.

    Every column of cells along z is a ray: the crossings of the triangles covering the column's centre, in
    depth order, pair up into inside stretches (a column with an odd count drops its last crossing).
    """
    lo = triangles.reshape(-1, 3).min(0) - 2 * cell
    hi = triangles.reshape(-1, 3).max(0) + 2 * cell
    shape = np.ceil((hi - lo) / cell).astype(np.int64)
    tri = (triangles - lo) / cell - 0.5  # grid units, cell centres at integers
    xy = tri[:, :, :2]
    start = np.ceil(xy.min(1)).astype(np.int64)
    stop = np.floor(xy.max(1)).astype(np.int64)
    size = np.clip(stop - start + 1, 0, None)
    count = size[:, 0] * size[:, 1]
    owner = np.repeat(np.arange(len(tri)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    cx = start[owner, 0] + local % np.maximum(size[owner, 0], 1)
    cy = start[owner, 1] + local // np.maximum(size[owner, 0], 1)
    t = tri[owner]
    x, y = t[:, :, 0] - cx[:, None], t[:, :, 1] - cy[:, None]
    w0 = x[:, 1] * y[:, 2] - x[:, 2] * y[:, 1]
    w1 = x[:, 2] * y[:, 0] - x[:, 0] * y[:, 2]
    w2 = x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]
    total = w0 + w1 + w2
    hit = (((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))) & (
        np.abs(total) > 1e-12
    )
    depth = (np.stack([w0, w1, w2], 1)[hit] * t[hit][:, :, 2]).sum(1) / total[hit]
    column = cx[hit] * shape[1] + cy[hit]
    order = np.lexsort((depth, column))
    column, depth = column[order], depth[order]
    # rank of each crossing within its column: even ranks enter, odd ranks leave
    first = np.r_[True, column[1:] != column[:-1]]
    rank = np.arange(len(column)) - np.maximum.accumulate(np.where(first, np.arange(len(column)), 0))
    enter = (rank % 2 == 0) & np.r_[column[1:] == column[:-1], False]
    leave = np.r_[False, enter[:-1]]
    diff = np.zeros((shape[0] * shape[1], shape[2] + 1), dtype=np.int32)
    k_in = np.clip(np.ceil(depth[enter]).astype(np.int64), 0, shape[2])
    k_out = np.clip(np.floor(depth[leave]).astype(np.int64) + 1, 0, shape[2])
    np.add.at(diff, (column[enter], k_in), 1)
    np.add.at(diff, (column[leave], k_out), -1)
    inside = np.cumsum(diff, axis=1)[:, :-1] > 0
    return Occupancy(inside.reshape(*shape), lo, cell)

"""FlexiCubes mesh extraction (inference form) on a sparse set of cubes, plus the mesh decoder's grid setup.

Terminology: the grid has ``R^3`` cubes and ``(R+1)^3`` vertices; vertex ``(x, y, z)`` has linear id
``(x (R+1) + y) (R+1) + z`` and cube ``(x, y, z)`` id ``(x R + y) R + z``. Cube corner ``c`` (0..7) sits at
offset ``(c & 1, c >> 1 & 1, c >> 2 & 1)``. The 12 cube edges are the corner pairs of :data:`EDGES`;
a vertex is *inside* when its SDF is negative.

Dual-contouring tables are generated here from first principles (:func:`_build_tables`): the cut edges of a
cube are grouped into surface patches (one dual vertex each) by connectivity over the cube faces, where an
ambiguous face (inside corners on one diagonal) always separates its inside corners. Cubes with a single
patch whose one ambiguous face could split it into two ("problem" cases) are switched to the split resolution
when the neighbour across that face is a problem cube as well, which keeps the surface manifold.

A dual vertex is the ``beta``-weighted mean of the ``alpha``-weighted SDF zero crossings on its edges; every
cut edge shared by four cubes yields a quad of their dual vertices, split into two triangles along the
diagonal with the larger product of the ``gamma`` weights. Only cubes touching at least one given vertex are
visited (untouched vertices are outside with SDF 1), so the cost follows the surface, not ``R^3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.nn import functional

CORNERS = tuple((c & 1, c >> 1 & 1, c >> 2 & 1) for c in range(8))
EDGES = ((0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4))
MAX_PATCHES = 4


@dataclass
class Mesh:
    """Triangle mesh of one object.

    Attributes:
        vertices: fp32 ``[V, 3]`` positions (object in ``[-0.5, 0.5]^3``, z up).
        faces: long ``[F, 3]`` vertex indices, counter-clockwise seen from outside.
        vertex_attrs: fp32 ``[V, 6]`` per-vertex RGB + normal-map channels in ``[0, 1]`` (or ``None``).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_attrs: torch.Tensor | None = None

    @property
    def face_normals(self) -> torch.Tensor:
        """Unit normals ``[F, 3]`` of ``(v1 - v0) x (v2 - v0)``."""
        v = self.vertices[self.faces]
        return functional.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)

    @property
    def success(self) -> bool:
        return self.vertices.shape[0] > 0 and self.faces.shape[0] > 0


def _faces_of_cube() -> list[tuple[int, list[int]]]:
    """(axis*2+side, corners) for the 6 cube faces."""
    return [
        (axis * 2 + side, [c for c in range(8) if CORNERS[c][axis] == side])
        for axis in range(3)
        for side in (0, 1)
    ]


def _patches(case: int, split_face: int | None = None) -> list[list[int]]:
    """Cut edges of ``case`` grouped into patches (sorted lists, ordered by first edge).

    ``split_face``: an ambiguous face whose resolution is inverted (its outside corners separated instead).
    """
    inside = [(case >> c) & 1 for c in range(8)]
    cut = [e for e, (a, b) in enumerate(EDGES) if inside[a] != inside[b]]
    root = {e: e for e in cut}

    def find(e: int) -> int:
        while root[e] != e:
            e = root[e]
        return e

    for face, corners in _faces_of_cube():
        on_face = [e for e in cut if EDGES[e][0] in corners and EDGES[e][1] in corners]
        if len(on_face) == 2:
            root[find(on_face[0])] = find(on_face[1])
        elif len(on_face) == 4:
            isolate = 0 if face == split_face else 1
            for c in corners:
                if inside[c] == isolate:
                    a, b = (e for e in on_face if c in EDGES[e])
                    root[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for e in cut:
        groups.setdefault(find(e), []).append(e)
    return sorted(groups.values())


def _ambiguous_faces(case: int) -> list[int]:
    inside = [(case >> c) & 1 for c in range(8)]
    return [
        face
        for face, corners in _faces_of_cube()
        if sum(inside[a] != inside[b] for a, b in EDGES if a in corners and b in corners) == 4
    ]


@lru_cache(maxsize=8)
def _build_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tables indexed by case id (bit c = corner c inside).

    Returns:
        patch_of_edge: long ``[256, 12]`` patch index of each cut edge (-1 if not cut);
        num_patches: long ``[256]``;
        problem_dir: long ``[256, 3]`` neighbour direction of a problem case's ambiguous face (zeros if none).
        The split resolution of a problem case ``c`` equals the regular resolution of ``255 - c``.
    """
    patch_of_edge = torch.full((256, 12), -1, dtype=torch.long)
    num_patches = torch.zeros(256, dtype=torch.long)
    problem_dir = torch.zeros(256, 3, dtype=torch.long)
    for case in range(256):
        patches = _patches(case)
        num_patches[case] = len(patches)
        for p, edges in enumerate(patches):
            patch_of_edge[case, edges] = p
        ambiguous = _ambiguous_faces(case)
        if len(ambiguous) == 1 and len(patches) == 1 and len(_patches(case, ambiguous[0])) == 2:
            axis, side = divmod(ambiguous[0], 2)
            problem_dir[case, axis] = 1 if side else -1
    return patch_of_edge.to(device), num_patches.to(device), problem_dir.to(device)


def _lookup(sorted_keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``query`` keys in ``sorted_keys`` and whether they exist."""
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=max(sorted_keys.numel() - 1, 0))
    return pos, sorted_keys[pos] == query


#: Cubes handled per pass of the chunked extraction. A pass holds ``[K, 8]`` corner lookups and up to 12 cut
#: edges per cube with ~200 bytes of temporaries each, so ~0.7 GiB at 2^18 cubes, whatever the mesh (the whole
#: noisy 1.4 M-cube grid of random weights at once took 11.4 GiB).
CUBE_CHUNK = 1 << 18
# Per cut-edge axis: the local edge that starts at a cube's corner 0 (its quad is counted from that cube).
_LOWER_EDGE = (0, 8, 3)


def flexicubes(
    vertex_ids: torch.Tensor,
    positions: torch.Tensor,
    sdf: torch.Tensor,
    colors: torch.Tensor | None,
    cube_ids: torch.Tensor,
    cube_weights: torch.Tensor,
    resolution: int,
    weight_scale: float = 0.99,
    chunk: int = CUBE_CHUNK,
) -> Mesh:
    """Extract the FlexiCubes surface of a sparse grid, ``chunk`` cubes at a time (bounded temporaries).

    Args:
        vertex_ids: long ``[M]`` sorted unique linear ids of the given grid vertices (others: SDF 1, outside).
        positions: fp32 ``[M, 3]`` (deformed) positions of those vertices.
        sdf: fp32 ``[M]`` SDF at those vertices.
        colors: fp32 ``[M, C]`` per-vertex attributes before the sigmoid (untouched vertices count as 0), or
            ``None``.
        cube_ids: long ``[K]`` sorted unique linear ids of cubes with weights (others: weights 0).
        cube_weights: fp32 ``[K, 21]`` raw ``beta`` (12) | ``alpha`` (8) | ``gamma`` (1).
        resolution: ``R`` cubes per axis.
        weight_scale: FlexiCubes weight scale.
        chunk: cubes per pass; the result does not depend on it (bit for bit on a CPU).
    Returns:
        the :class:`Mesh` (``vertex_attrs`` = sigmoid colours interpolated like the vertices).
    """
    grid = _Grid(vertex_ids, sdf, resolution, max(1, int(chunk)))
    if vertex_ids.numel() == 0:
        return _empty_mesh(positions, colors)
    cubes, case = grid.surface_cubes(_candidate_cubes(vertex_ids, resolution))
    if cubes.numel() == 0:
        return _empty_mesh(positions, colors)
    case = grid.resolve_problem_cases(cubes, case)
    patch_of_edge, num_patches, _ = _build_tables(positions.device)
    counts = num_patches[case]
    first_vd = torch.cumsum(counts, 0) - counts
    num_vd = int(counts.sum())
    acc = _DualAccumulator(num_vd, positions, colors)
    gamma = positions.new_empty(cubes.numel())
    quads: list[list[torch.Tensor]] = [[], [], []]
    flips: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, cubes.numel(), grid.chunk):
        rows = slice(start, start + grid.chunk)
        corner_ids, corner_pos, corner_found, _ = grid.corners(cubes[rows])
        weights = _cube_weights(cube_ids, cube_weights, cubes[rows])
        beta = torch.tanh(weights[:, :12]) * weight_scale + 1
        alpha = torch.tanh(weights[:, 12:20]) * weight_scale + 1
        gamma[rows] = torch.sigmoid(weights[:, 20]) * weight_scale + (1 - weight_scale) / 2
        patches = patch_of_edge[case[rows]]  # [k, 12]
        cube_row, local_edge = torch.nonzero(patches >= 0, as_tuple=True)
        ends = _EDGE_TABLE.to(positions.device)[local_edge]  # [E, 2] corners
        end_pos = corner_pos[cube_row[:, None], ends]
        end_found = corner_found[cube_row[:, None], ends]
        end_sdf = torch.where(end_found, sdf[end_pos], torch.ones((), device=sdf.device))
        # an untouched vertex (SDF 1) can end a cut edge: its position is the undeformed grid point
        grid_x = _grid_position(corner_ids[cube_row[:, None], ends], resolution + 1, resolution)
        end_x = torch.where(end_found[..., None], positions[end_pos], grid_x)
        ws = end_sdf * alpha[cube_row[:, None], ends]  # [E, 2]
        lam = torch.stack([ws[:, 1], -ws[:, 0]], dim=1)
        vd_of = first_vd[rows][cube_row] + patches[cube_row, local_edge]
        acc.add(vd_of, end_x, end_pos, end_found, lam, beta[cube_row, local_edge][:, None])
        cube_xyz = _cube_xyz(cubes[rows], resolution)
        for axis, local in enumerate(_LOWER_EDGE):
            sel = local_edge == local
            q, flip = _quads_of_edges(
                cubes, case, first_vd, cube_xyz[cube_row[sel]], end_sdf[sel, 0], axis, resolution
            )
            quads[axis].append(q)
            flips[axis].append(flip)
    vertices, attrs = acc.result()
    vd_gamma = torch.repeat_interleave(gamma, counts)
    faces = _triangulate(torch.cat(sum(quads, [])), torch.cat(sum(flips, [])), vd_gamma)
    return Mesh(vertices, faces, attrs)


_EDGE_TABLE = torch.tensor(EDGES, dtype=torch.long)
_CORNER_TABLE = torch.tensor(CORNERS, dtype=torch.long)


def _empty_mesh(positions: torch.Tensor, colors: torch.Tensor | None) -> Mesh:
    attrs = None if colors is None else positions.new_zeros(0, colors.shape[1])
    return Mesh(
        positions.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=positions.device), attrs
    )


def _cube_xyz(cubes: torch.Tensor, r: int) -> torch.Tensor:
    """Linear cube ids ``[K]`` -> long ``[K, 3]`` cube coordinates."""
    return torch.stack([cubes // (r * r), cubes // r % r, cubes % r], dim=1)


def _candidate_cubes(vertex_ids: torch.Tensor, r: int) -> torch.Tensor:
    """Sorted unique ids of the in-grid cubes that have a given vertex as a corner (``[C]`` long); built one
    corner offset at a time, so the temporaries stay ``O(M + C)``."""
    rv = r + 1
    vx = torch.stack([vertex_ids // (rv * rv), vertex_ids // rv % rv, vertex_ids % rv], dim=1)
    cubes = vertex_ids.new_zeros(0)
    for offset in CORNERS:
        xyz = vx - torch.tensor(offset, dtype=torch.long, device=vx.device)
        xyz = xyz[((xyz >= 0) & (xyz < r)).all(dim=1)]
        cubes = torch.unique(torch.cat([cubes, (xyz[:, 0] * r + xyz[:, 1]) * r + xyz[:, 2]]))
    return cubes


def _cube_weights(cube_ids: torch.Tensor, cube_weights: torch.Tensor, cubes: torch.Tensor) -> torch.Tensor:
    """Raw weights ``[k, 21]`` of ``cubes`` (zeros for cubes without given weights)."""
    w_pos, w_found = _lookup(cube_ids, cubes)
    return torch.where(w_found[:, None], cube_weights[w_pos], torch.zeros((), device=cube_weights.device))


class _Grid:
    """The given vertices' SDF on the ``R^3`` grid and the chunked per-cube passes over it."""

    def __init__(self, vertex_ids: torch.Tensor, sdf: torch.Tensor, r: int, chunk: int) -> None:
        self.vertex_ids, self.sdf, self.r, self.chunk = vertex_ids, sdf, r, chunk

    def corners(self, cubes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Corner vertex ids, rows in the given vertices, whether given, SDF (1 if not): each ``[k, 8]``."""
        rv = self.r + 1
        corner_xyz = _cube_xyz(cubes, self.r)[:, None, :] + _CORNER_TABLE.to(cubes.device)[None]
        corner_ids = (corner_xyz[..., 0] * rv + corner_xyz[..., 1]) * rv + corner_xyz[..., 2]
        del corner_xyz
        pos, found = _lookup(self.vertex_ids, corner_ids)
        corner_sdf = torch.where(found, self.sdf[pos], torch.ones((), device=self.sdf.device))
        return corner_ids, pos, found, corner_sdf

    def surface_cubes(self, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates with inside and outside corners (sorted ``[S]``) and their case ids ``[S]``."""
        bits = torch.arange(8, device=candidates.device)
        kept, cases = [], []
        for start in range(0, candidates.numel(), self.chunk):
            ids = candidates[start : start + self.chunk]
            inside = self.corners(ids)[3] < 0
            n_inside = inside.sum(dim=1)
            surf = (n_inside > 0) & (n_inside < 8)
            kept.append(ids[surf])
            cases.append((inside[surf].long() << bits).sum(dim=1))
        return torch.cat(kept), torch.cat(cases)

    def resolve_problem_cases(self, cubes: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        """Switch a problem case to its complementary resolution when its neighbour across the ambiguous face
        is a problem cube too (decided on the unswitched cases) -> ``[S]``."""
        _, _, problem_dir = _build_tables(cubes.device)
        r = self.r
        resolved = case.clone()
        for start in range(0, cubes.numel(), self.chunk):
            rows = slice(start, start + self.chunk)
            own = case[rows]
            direction = problem_dir[own]
            is_problem = direction.abs().sum(dim=1) > 0
            nb = _cube_xyz(cubes[rows], r) + direction
            nb_ok = is_problem & ((nb >= 0) & (nb < r)).all(dim=1)
            nb_pos, nb_found = _lookup(cubes, (nb[:, 0] * r + nb[:, 1]) * r + nb[:, 2])
            nb_problem = nb_found & (problem_dir[case[nb_pos]].abs().sum(dim=1) > 0)
            resolved[rows] = torch.where(nb_ok & nb_problem, 255 - own, own)
        return resolved


class _DualAccumulator:
    """Sums of the ``beta``-weighted edge crossings per dual vertex (positions and sigmoid colours)."""

    def __init__(self, num_vd: int, positions: torch.Tensor, colors: torch.Tensor | None) -> None:
        self.positions = positions
        self.beta_sum = positions.new_zeros(num_vd, 1)
        self.vertices = positions.new_zeros(num_vd, 3)
        self.colors = None if colors is None else torch.sigmoid(colors)
        self.attrs = None if colors is None else colors.new_zeros(num_vd, colors.shape[1])

    def add(
        self,
        vd_of: torch.Tensor,
        end_x: torch.Tensor,
        end_pos: torch.Tensor,
        end_found: torch.Tensor,
        lam: torch.Tensor,
        b: torch.Tensor,
    ) -> None:
        """Cut edges ``[E]`` of dual vertices ``vd_of``: end positions ``[E, 2, 3]``, end rows / given
        ``[E, 2]``, crossing weights ``lam`` ``[E, 2]``, ``beta`` ``[E, 1]``."""
        crossing = (end_x * lam[..., None]).sum(1) / lam.sum(1, keepdim=True)
        self.beta_sum.index_add_(0, vd_of, b)
        self.vertices.index_add_(0, vd_of, crossing * b)
        if self.colors is not None and self.attrs is not None:
            c = torch.where(end_found[..., None], self.colors[end_pos], torch.full((), 0.5, device=b.device))
            crossing_c = (c * lam[..., None]).sum(1) / lam.sum(1, keepdim=True)
            self.attrs.index_add_(0, vd_of, crossing_c * b)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dual vertex positions ``[V, 3]`` and attributes ``[V, C]`` (or ``None``)."""
        attrs = None if self.attrs is None else self.attrs / self.beta_sum
        return self.vertices / self.beta_sum, attrs


def _grid_position(vertex_ids: torch.Tensor, rv: int, r: int) -> torch.Tensor:
    """Undeformed position ``v / R - 0.5`` of grid vertices given by linear id (any shape -> ``[..., 3]``)."""
    xyz = torch.stack([vertex_ids // (rv * rv), vertex_ids // rv % rv, vertex_ids % rv], dim=-1)
    return xyz.float() / r - 0.5


# For a cut edge along axis a starting at grid vertex p, the 4 cubes around it in ascending cube id order
# (offsets from p) and the local edge index of that grid edge inside each of them.
_AROUND = {
    0: ([(0, -1, -1), (0, -1, 0), (0, 0, -1), (0, 0, 0)], [6, 4, 2, 0]),
    1: ([(-1, 0, -1), (-1, 0, 0), (0, 0, -1), (0, 0, 0)], [10, 9, 11, 8]),
    2: ([(-1, -1, 0), (-1, 0, 0), (0, -1, 0), (0, 0, 0)], [5, 1, 7, 3]),
}


def _quads_of_edges(
    cubes: torch.Tensor,
    case: torch.Tensor,
    first_vd: torch.Tensor,
    lower: torch.Tensor,
    s0: torch.Tensor,
    axis: int,
    r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quads of the cut grid edges along ``axis`` that start at grid vertices ``lower`` ``[Q, 3]``.

    Every such edge is counted once, from the cube whose corner 0 it starts at (the last of its 4 cubes);
    edges with a cube around them outside the grid give no quad. ``s0`` ``[Q]``: SDF at the edge's first
    corner (the same corner of the grid edge in all 4 cubes). Returns the 4 dual-vertex ids of each quad in
    the order of :data:`_AROUND` ``[Q', 4]`` and whether the SDF there is positive ``[Q']``.
    """
    patch_of_edge, _, _ = _build_tables(cubes.device)
    offsets, locals_ = _AROUND[axis]
    off = torch.tensor(offsets, dtype=torch.long, device=cubes.device)
    around = lower[:, None, :] + off[None]  # [Q, 4, 3]
    valid = ((around >= 0) & (around < r)).all(dim=2).all(dim=1)
    around, s = around[valid], s0[valid]
    rows, _ = _lookup(cubes, (around[..., 0] * r + around[..., 1]) * r + around[..., 2])
    loc = torch.tensor(locals_, dtype=torch.long, device=cubes.device)
    return first_vd[rows] + patch_of_edge[case[rows], loc[None].expand_as(rows)], s > 0


def _triangulate(quads: torch.Tensor, flip: torch.Tensor, vd_gamma: torch.Tensor) -> torch.Tensor:
    """Quads ``[Q, 4]`` (outward order chosen by ``flip``) split along the diagonal with the larger
    product of ``gamma`` -> triangles ``[2Q, 3]``."""
    device = quads.device
    quads = torch.cat([quads[flip][:, [0, 1, 3, 2]], quads[~flip][:, [2, 3, 1, 0]]])
    g = vd_gamma[quads]
    split_02 = (g[:, 0] * g[:, 2]) > (g[:, 1] * g[:, 3])
    tri_a = torch.tensor([0, 1, 2, 0, 2, 3], device=device)
    tri_b = torch.tensor([0, 1, 3, 3, 1, 2], device=device)
    faces = torch.where(split_02[:, None], quads[:, tri_a], quads[:, tri_b])
    return faces.reshape(-1, 3)


# Channel layout of the mesh decoder output per voxel: sdf 8 | deform 8x3 | weights 21 | colour 8x6.
SDF, DEFORM, WEIGHTS = slice(0, 8), slice(8, 32), slice(32, 53)
COLOR_START = 53


def mesh_from_features(
    coords: torch.Tensor,
    feats: torch.Tensor,
    resolution: int,
    use_color: bool = True,
    chunk: int = CUBE_CHUNK,
) -> Mesh:
    """Mesh of one object from the mesh decoder's per-voxel features.

    Args:
        coords: int ``[N, 3]`` voxel (= cube) coordinates in ``[0, resolution)``.
        feats: ``[N, 53 (+48 with colour)]`` raw features (the SDF bias ``-1/R`` is added here).
        resolution: ``R`` (4x the latent resolution).
        use_color: interpret channels 53..100 as 8 corners x 6 attributes.
        chunk: voxels per pass here and cubes per pass in :func:`flexicubes` (the result does not depend on
            it; the temporaries do).
    Returns:
        the extracted :class:`Mesh`. Corner values shared by several voxels are averaged.
    """
    need = COLOR_START + (48 if use_color else 0)
    if feats.dim() != 2 or feats.shape[1] != need or coords.shape != (feats.shape[0], 3):
        raise ValueError(
            f"mesh features must be [N, {need}] with coords [N, 3]; "
            f"got {tuple(feats.shape)}, {tuple(coords.shape)}"
        )
    feats = feats.float()
    n = feats.shape[0]
    r, rv = resolution, resolution + 1
    corner = _CORNER_TABLE.to(feats.device)
    c = coords.long()
    ids = (
        ((c[:, None, 0] + corner[:, 0]) * rv + c[:, None, 1] + corner[:, 1]) * rv
        + c[:, None, 2]
        + corner[:, 2]
    )
    vertex_ids, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
    del ids
    counts = torch.bincount(inverse, minlength=vertex_ids.numel()).to(feats.dtype)[:, None]
    width = 4 + (6 if use_color else 0)
    mean = feats.new_zeros(vertex_ids.numel(), width)
    for start in range(0, n, chunk):  # corner rows in cube-major order, as one pass would add them
        part = feats[start : start + chunk]
        k = part.shape[0]
        per_corner = [part[:, SDF].reshape(k, 8, 1) + (-1.0 / r), part[:, DEFORM].reshape(k, 8, 3)]
        if use_color:
            per_corner.append(part[:, COLOR_START:].reshape(k, 8, 6))
        mean.index_add_(
            0, inverse[start * 8 : (start + k) * 8], torch.cat(per_corner, dim=-1).reshape(k * 8, -1)
        )
    mean /= counts
    del inverse, counts
    positions = _grid_position(vertex_ids, rv, r) + (1 - 1e-8) / (2 * r) * torch.tanh(mean[:, 1:4])
    cube_ids, order = torch.sort((c[:, 0] * r + c[:, 1]) * r + c[:, 2])
    return flexicubes(
        vertex_ids,
        positions,
        mean[:, 0],
        mean[:, 4:] if use_color else None,
        cube_ids,
        feats[:, WEIGHTS].index_select(0, order),
        resolution,
        chunk=chunk,
    )

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


def flexicubes(
    vertex_ids: torch.Tensor,
    positions: torch.Tensor,
    sdf: torch.Tensor,
    colors: torch.Tensor | None,
    cube_ids: torch.Tensor,
    cube_weights: torch.Tensor,
    resolution: int,
    weight_scale: float = 0.99,
) -> Mesh:
    """Extract the FlexiCubes surface of a sparse grid.

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
    Returns:
        the :class:`Mesh` (``vertex_attrs`` = sigmoid colours interpolated like the vertices).
    """
    device = positions.device
    r, rv = resolution, resolution + 1
    if vertex_ids.numel() == 0:
        attrs = None if colors is None else positions.new_zeros(0, colors.shape[1])
        return Mesh(positions.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device), attrs)
    patch_of_edge, num_patches, problem_dir = _build_tables(device)
    corner = torch.tensor(CORNERS, dtype=torch.long, device=device)  # [8, 3]
    edges = torch.tensor(EDGES, dtype=torch.long, device=device)  # [12, 2]

    # candidate cubes: every cube with a given vertex as a corner, inside the grid
    vx = torch.stack([vertex_ids // (rv * rv), vertex_ids // rv % rv, vertex_ids % rv], dim=1)
    cand = (vx[:, None, :] - corner[None]).reshape(-1, 3)
    cand = cand[((cand >= 0) & (cand < r)).all(dim=1)]
    cubes = torch.unique((cand[:, 0] * r + cand[:, 1]) * r + cand[:, 2])
    cube_xyz = torch.stack([cubes // (r * r), cubes // r % r, cubes % r], dim=1)

    # corner SDF and occupancy
    corner_xyz = cube_xyz[:, None, :] + corner[None]  # [C, 8, 3]
    corner_ids = (corner_xyz[..., 0] * rv + corner_xyz[..., 1]) * rv + corner_xyz[..., 2]
    pos, found = _lookup(vertex_ids, corner_ids)
    corner_sdf = torch.where(found, sdf[pos], torch.ones((), device=device))
    inside = corner_sdf < 0
    n_inside = inside.sum(dim=1)
    surf = (n_inside > 0) & (n_inside < 8)
    cubes, cube_xyz, inside = cubes[surf], cube_xyz[surf], inside[surf]
    corner_ids, corner_pos, corner_found = corner_ids[surf], pos[surf], found[surf]
    if cubes.numel() == 0:
        attrs = None if colors is None else positions.new_zeros(0, colors.shape[1])
        return Mesh(positions.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device), attrs)
    case = (inside.long() << torch.arange(8, device=device)).sum(dim=1)

    # problem cases: switch to the complementary resolution when the neighbour is a problem cube too
    direction = problem_dir[case]
    is_problem = direction.abs().sum(dim=1) > 0
    nb = cube_xyz + direction
    nb_ok = is_problem & ((nb >= 0) & (nb < r)).all(dim=1)
    nb_pos, nb_found = _lookup(cubes, (nb[:, 0] * r + nb[:, 1]) * r + nb[:, 2])
    nb_problem = nb_found & (problem_dir[case[nb_pos]].abs().sum(dim=1) > 0)
    case = torch.where(nb_ok & nb_problem, 255 - case, case)

    # per-cube weights
    w_pos, w_found = _lookup(cube_ids, cubes)
    weights = torch.where(w_found[:, None], cube_weights[w_pos], torch.zeros((), device=device))
    beta = torch.tanh(weights[:, :12]) * weight_scale + 1
    alpha = torch.tanh(weights[:, 12:20]) * weight_scale + 1
    gamma = torch.sigmoid(weights[:, 20]) * weight_scale + (1 - weight_scale) / 2

    # dual vertices: one per patch, numbered cube by cube
    patches = patch_of_edge[case]  # [C, 12]
    counts = num_patches[case]
    first_vd = torch.cumsum(counts, 0) - counts
    num_vd = int(counts.sum())
    cube_row, local_edge = torch.nonzero(patches >= 0, as_tuple=True)
    vd_of = first_vd[cube_row] + patches[cube_row, local_edge]
    ends = edges[local_edge]  # [E, 2] corners
    end_pos = corner_pos[cube_row[:, None], ends]
    end_found = corner_found[cube_row[:, None], ends]
    end_sdf = torch.where(end_found, sdf[end_pos], torch.ones((), device=device))
    # an untouched vertex (SDF 1) can end a cut edge: its position is the undeformed grid point
    grid_x = _grid_position(corner_ids[cube_row[:, None], ends], rv, r)
    end_x = torch.where(end_found[..., None], positions[end_pos], grid_x)
    ws = end_sdf * alpha[cube_row[:, None], ends]  # [E, 2]
    lam = torch.stack([ws[:, 1], -ws[:, 0]], dim=1)
    crossing = (end_x * lam[..., None]).sum(1) / lam.sum(1, keepdim=True)
    b = beta[cube_row, local_edge][:, None]
    beta_sum = positions.new_zeros(num_vd, 1).index_add_(0, vd_of, b)
    vertices = positions.new_zeros(num_vd, 3).index_add_(0, vd_of, crossing * b) / beta_sum
    attrs = None
    if colors is not None:
        c = torch.sigmoid(colors)[end_pos]
        c = torch.where(end_found[..., None], c, torch.full((), 0.5, device=device))
        crossing_c = (c * lam[..., None]).sum(1) / lam.sum(1, keepdim=True)
        attrs = colors.new_zeros(num_vd, colors.shape[1]).index_add_(0, vd_of, crossing_c * b) / beta_sum
    vd_gamma = torch.repeat_interleave(gamma, counts)

    faces = _quads_to_triangles(cubes, patches, first_vd, cube_row, local_edge, end_sdf, vd_gamma, r)
    return Mesh(vertices, faces, attrs)


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
_EDGE_AXIS = (0, 2, 0, 2, 0, 2, 0, 2, 1, 1, 1, 1)


def _quads_to_triangles(
    cubes: torch.Tensor,
    patches: torch.Tensor,
    first_vd: torch.Tensor,
    cube_row: torch.Tensor,
    local_edge: torch.Tensor,
    end_sdf: torch.Tensor,
    vd_gamma: torch.Tensor,
    r: int,
) -> torch.Tensor:
    """Quads of the 4 dual vertices around every interior cut edge, split into triangles -> ``[F, 3]``."""
    device = cubes.device
    cube_xyz = torch.stack([cubes // (r * r), cubes // r % r, cubes % r], dim=1)
    corner = torch.tensor(CORNERS, dtype=torch.long, device=device)
    edges = torch.tensor(EDGES, dtype=torch.long, device=device)
    # canonical description of each (cube, cut edge): lower grid vertex + axis; sdf at the edge's first corner
    lower = cube_xyz[cube_row] + torch.minimum(corner[edges[local_edge, 0]], corner[edges[local_edge, 1]])
    axis = torch.tensor(_EDGE_AXIS, device=device)[local_edge]
    key = ((lower[:, 0] * (r + 1) + lower[:, 1]) * (r + 1) + lower[:, 2]) * 3 + axis
    key, first = torch.unique(key, return_inverse=True)
    pick = torch.zeros_like(key).scatter_(0, first, torch.arange(first.numel(), device=device))
    s0 = end_sdf[pick, 0]
    p, ax = lower[pick], axis[pick]
    all_quads, all_flip = [], []
    for a, (offsets, locals_) in _AROUND.items():
        sel = ax == a
        if not bool(sel.any()):
            continue
        base = p[sel]
        off = torch.tensor(offsets, dtype=torch.long, device=device)
        around = base[:, None, :] + off[None]  # [Q, 4, 3]
        valid = ((around >= 0) & (around < r)).all(dim=2).all(dim=1)
        around, s = around[valid], s0[sel][valid]
        ids = (around[..., 0] * r + around[..., 1]) * r + around[..., 2]
        rows, _ = _lookup(cubes, ids)
        loc = torch.tensor(locals_, dtype=torch.long, device=device)
        all_quads.append(first_vd[rows] + patches[rows, loc[None].expand_as(rows)])
        all_flip.append(s > 0)
    quads = torch.cat(all_quads)
    flip = torch.cat(all_flip)
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
    coords: torch.Tensor, feats: torch.Tensor, resolution: int, use_color: bool = True
) -> Mesh:
    """Mesh of one object from the mesh decoder's per-voxel features.

    Args:
        coords: int ``[N, 3]`` voxel (= cube) coordinates in ``[0, resolution)``.
        feats: ``[N, 53 (+48 with colour)]`` raw features (the SDF bias ``-1/R`` is added here).
        resolution: ``R`` (4x the latent resolution).
        use_color: interpret channels 53..100 as 8 corners x 6 attributes.
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
    per_corner = [feats[:, SDF].reshape(n, 8, 1) + (-1.0 / r), feats[:, DEFORM].reshape(n, 8, 3)]
    if use_color:
        per_corner.append(feats[:, COLOR_START:].reshape(n, 8, 6))
    values = torch.cat(per_corner, dim=-1).reshape(n * 8, -1)
    corner = torch.tensor(CORNERS, dtype=torch.long, device=feats.device)
    xyz = coords.long()[:, None, :] + corner[None]
    ids = ((xyz[..., 0] * rv + xyz[..., 1]) * rv + xyz[..., 2]).reshape(-1)
    vertex_ids, inverse = torch.unique(ids, return_inverse=True)
    counts = torch.bincount(inverse, minlength=vertex_ids.numel()).to(values.dtype)[:, None]
    mean = values.new_zeros(vertex_ids.numel(), values.shape[1]).index_add_(0, inverse, values) / counts
    positions = _grid_position(vertex_ids, rv, r) + (1 - 1e-8) / (2 * r) * torch.tanh(mean[:, 1:4])
    cube_ids = (coords[:, 0].long() * r + coords[:, 1].long()) * r + coords[:, 2].long()
    cube_ids, order = torch.sort(cube_ids)
    return flexicubes(
        vertex_ids,
        positions,
        mean[:, 0],
        mean[:, 4:] if use_color else None,
        cube_ids,
        feats[order][:, WEIGHTS],
        resolution,
    )

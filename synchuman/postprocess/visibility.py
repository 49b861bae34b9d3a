"""Removal of invisible interior faces: multi-view visibility, min-cut on the dual graph, small-hole filling.

Upstream behaviour: rasterise the mesh from ``num_views`` cameras on a sphere (radius 2, fov 40 degrees,
Hammersley layout) and count, per face, the share of views that see it. Faces seen by almost no view are the
"inside" seeds, well-seen faces (per connected component, above a quantile threshold) the "outside" seeds; a
min-cut of the dual graph weighted by shared edge lengths separates them. A cut piece is removed only if it is
rarely seen and every new boundary loop it leaves is small (area <= ``max_hole_size``); pymeshfix then fills
boundaries of at most ``max_hole_nbe`` edges. Up to three parameter sets are tried (see
:data:`UPSTREAM_PASSES`);
unlike upstream, visibility is computed once and reused by every pass.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from synchuman.geometry import camera, mesh_graph
from synchuman.geometry.raster import MAX_VIEW_FACES, rasterize

if TYPE_CHECKING:
    import igraph


@dataclass(frozen=True)
class CutParams:
    """Seed thresholds of one pass.

    Attributes:
        outer_quantile: per-component visibility quantile used as the outside threshold.
        outer_min: lower bound of that threshold; also the largest median visibility of a removable piece.
        inner_max: faces with visibility <= this are inside seeds.
    """

    outer_quantile: float
    outer_min: float
    inner_max: float


UPSTREAM_PASSES = (CutParams(0.7, 0.15, 0.01), CutParams(0.7, 0.15, 0.0), CutParams(0.6, 0.08, 0.01))


def visibility_cameras(
    num_views: int, radius: float = 2.0, fov_deg: float = 40.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extrinsics ``[N, 4, 4]`` and intrinsics ``[N, 3, 3]`` of the visibility views (perspective)."""
    yaw, pitch = camera.sphere_hammersley(num_views)
    extrinsics = camera.orbit_extrinsics(yaw, pitch, radius)
    intrinsics = camera.intrinsics_from_fov(math.radians(fov_deg)).expand(num_views, 3, 3)
    return extrinsics, intrinsics


def face_visibility(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    num_views: int = 1000,
    resolution: int = 1024,
    views_per_batch: int | None = None,
    max_candidates: int = 1 << 24,
    backend: str = "torch",
    on_step: Callable[[int, int], None] | None = None,
    max_view_faces: int = MAX_VIEW_FACES,
) -> torch.Tensor:
    """Share of views ``[F]`` float32 (0..1) in which each face covers at least one pixel centre.

    Runs on ``vertices.device``; ``views_per_batch`` defaults to 64M pixels per batch on CUDA (512 MiB depth
    buffer, which becomes the face ids in place), 4M on CPU. ``backend``: the rasteriser
    (:func:`~synchuman.geometry.raster.rasterize`; ``max_candidates`` and ``max_view_faces`` bound its
    working memory whatever the face count, with the same result). ``on_step(views done, num_views)`` after
    every batch.
    """
    device = vertices.device
    num_faces = faces.shape[0]
    extrinsics, intrinsics = visibility_cameras(num_views)
    extrinsics, intrinsics = extrinsics.to(device), intrinsics.to(device)
    batch = views_per_batch or max(
        1, (1 << (26 if device.type == "cuda" else 22)) // (resolution * resolution)
    )
    counts = torch.zeros(num_faces, dtype=torch.int32, device=device)
    for start in range(0, num_views, batch):
        stop = min(start + batch, num_views)
        face_id = rasterize(
            vertices,
            faces,
            extrinsics[start:stop],
            intrinsics[start:stop],
            resolution,
            resolution,
            with_bary=False,
            max_candidates=max_candidates,
            backend=backend,
            max_view_faces=max_view_faces,
        ).face_id.reshape(stop - start, -1)
        # per view one slot per face plus a spare slot for the misses; the ids become slots in place
        face_id.masked_fill_(face_id < 0, num_faces)
        face_id += torch.arange(stop - start, device=device)[:, None] * (num_faces + 1)
        seen = torch.zeros((stop - start) * (num_faces + 1), dtype=torch.bool, device=device)
        seen[face_id.reshape(-1)] = True
        del face_id
        counts += seen.reshape(stop - start, num_faces + 1)[:, :num_faces].sum(dim=0, dtype=torch.int32)
        del seen
        if on_step is not None:
            on_step(stop, num_views)
    return counts.float() / num_views


def _component_quantile(values: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """Per-label linear-interpolated quantile ``q`` of ``values``; returns ``[C]``."""
    num = int(labels.max()) + 1
    order = torch.argsort(labels.double() * 2 + values.double())
    sorted_vals = values[order]
    counts = torch.bincount(labels, minlength=num)
    starts = torch.cumsum(counts, 0) - counts
    pos = starts.double() + q * (counts - 1).clamp(min=0).double()
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = (pos - lo.double()).float()
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def _loop_areas(vertices: torch.Tensor, loop_edges: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fan area ``[loops]`` of each loop (edges ``[L, 2]``, loop ``labels [L]``) around its edge centroid."""
    num = int(labels.max()) + 1
    mids = vertices[loop_edges].mean(dim=1)
    centre = torch.zeros(num, 3, dtype=vertices.dtype).index_add_(0, labels, mids)
    centre = centre / torch.bincount(labels, minlength=num)[:, None]
    e0 = vertices[loop_edges[:, 0]] - centre[labels]
    e1 = vertices[loop_edges[:, 1]] - centre[labels]
    tri_area = torch.linalg.cross(e0, e1, dim=-1).norm(dim=-1) * 0.5
    return torch.zeros(num, dtype=vertices.dtype).index_add_(0, labels, tri_area)


def _removable_pieces(
    vertices: torch.Tensor,
    side: torch.Tensor,
    visibility: torch.Tensor,
    graph: FaceGraph,
    params: CutParams,
    max_hole_size: float,
) -> torch.Tensor:
    """Which faces of the cut side ``side [S]`` may go (bool ``[S]``), all connected pieces at once.

    A piece may go when its (lower) median visibility is <= ``params.outer_min`` and every new boundary loop
    it would open (its edges used once by the piece that are not already mesh boundary) has a fan area
    <= ``max_hole_size``.
    """
    piece = mesh_graph.face_components(graph.faces[side])
    num_pieces = int(piece.max()) + 1
    vis = visibility[side]
    order = torch.argsort(piece.double() * 2 + vis.double())
    counts = torch.bincount(piece, minlength=num_pieces)
    starts = torch.cumsum(counts, 0) - counts
    ok = vis[order][starts + (counts - 1) // 2] <= params.outer_min
    num_edges = graph.edges.shape[0]
    keys, uses = torch.unique(
        (piece[:, None] * num_edges + graph.face2edge[side]).reshape(-1), return_counts=True
    )
    key_piece, key_edge = keys // num_edges, keys % num_edges
    new = (uses == 1) & (graph.degree[key_edge] != 1)
    key_piece, key_edge = key_piece[new], key_edge[new]
    if key_edge.numel():
        loop_edges = graph.edges[key_edge]
        # vertex ids made piece-specific so that loops of different pieces never merge
        labels = mesh_graph.edge_components(key_piece[:, None] * vertices.shape[0] + loop_edges)
        areas = _loop_areas(vertices, loop_edges, labels)
        loop_piece = torch.zeros(len(areas), dtype=torch.long).scatter_(0, labels, key_piece)
        too_big = torch.zeros(num_pieces, dtype=torch.bool)
        too_big[loop_piece[areas > max_hole_size]] = True
        ok &= ~too_big
    return ok[piece]


@dataclass
class FaceGraph:
    """Connectivity of one mesh, computed once and shared by every cut pass (CPU tensors).

    Attributes:
        edges ``[E, 2]``, face2edge ``[F, 3]``, degree ``[E]`` (see :func:`mesh_graph.compute_edges`),
        labels ``[F]`` face component, dual ``[D, 2]`` face pairs, lengths ``[D]`` shared-edge lengths,
        faces ``[F, 3]``.
    """

    edges: torch.Tensor
    face2edge: torch.Tensor
    degree: torch.Tensor
    labels: torch.Tensor
    dual: torch.Tensor
    lengths: torch.Tensor
    faces: torch.Tensor
    _flow: object = None

    def flow_graph(self) -> igraph.Graph:
        """A fresh igraph graph: one node per face plus source and sink, the dual edges (built once)."""
        import igraph

        if self._flow is None:
            self._flow = igraph.Graph(n=self.faces.shape[0] + 2, edges=self.dual.numpy())
        return self._flow.copy()

    @classmethod
    def build(cls, vertices: torch.Tensor, faces: torch.Tensor) -> FaceGraph:
        edges, face2edge, degree = mesh_graph.compute_edges(faces)
        dual, dual_edge = mesh_graph.compute_dual_graph(face2edge)
        labels = mesh_graph.connected_components(faces.shape[0], dual)
        lengths = (vertices[edges[dual_edge, 0]] - vertices[edges[dual_edge, 1]]).norm(dim=-1)
        return cls(edges, face2edge, degree, labels, dual, lengths, faces)


def cut_interior(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    visibility: torch.Tensor,
    params: CutParams,
    max_hole_size: float,
    graph: FaceGraph | None = None,
) -> torch.Tensor | None:
    """Faces to remove (bool ``[F]``) for one pass on CPU tensors, or None when no face is an inside seed."""
    num_faces = faces.shape[0]
    graph = graph or FaceGraph.build(vertices, faces)
    labels = graph.labels
    global_q = float(torch.quantile(visibility, params.outer_quantile)) if num_faces < 1 << 24 else 0.5
    comp_q = _component_quantile(visibility, labels, params.outer_quantile).clamp(max=global_q)
    threshold = comp_q.clamp(min=params.outer_min).clamp(max=0.5)
    outer = visibility > threshold[labels]
    inner = visibility <= params.inner_max
    if not bool(inner.any()):
        return None
    dual, lengths = graph.dual, graph.lengths
    source, sink = num_faces, num_faces + 1
    inner_ids, outer_ids = inner.nonzero().squeeze(1), outer.nonzero().squeeze(1)
    links = torch.cat(
        [
            dual,
            torch.stack([inner_ids, torch.full_like(inner_ids, source)], dim=1),
            torch.stack([outer_ids, torch.full_like(outer_ids, sink)], dim=1),
        ]
    )
    capacity = torch.cat([lengths, torch.ones(len(inner_ids) + len(outer_ids))]) * 1000
    flow = graph.flow_graph()
    flow.add_edges(links[len(dual) :].numpy())
    cut = flow.mincut(source, sink, capacity.tolist())
    side = torch.tensor([v for v in cut.partition[0] if v < num_faces], dtype=torch.long)
    remove = torch.zeros(num_faces, dtype=torch.bool)
    if side.numel() == 0:
        return remove
    remove[side] = _removable_pieces(vertices, side, visibility, graph, params, max_hole_size)
    return remove


def _binary_ply(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Little-endian binary PLY of ``vertices`` ``[V, 3]`` (float32 x, y, z) and triangles ``faces``
    ``[F, 3]`` (uchar count 3 + int32 indices), the layout MeshFix's PLY loader reads."""
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    triangles = np.empty(len(faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    triangles["count"] = 3
    triangles["indices"] = faces
    return header.encode() + np.ascontiguousarray(vertices, dtype="<f4").tobytes() + triangles.tobytes()


def fill_small_holes(
    vertices: np.ndarray, faces: np.ndarray, max_hole_edges: int
) -> tuple[np.ndarray, np.ndarray]:
    """pymeshfix: fill boundary loops of at most ``max_hole_edges`` edges (refined). Returns new arrays.

    The mesh reaches MeshFix through a binary PLY file, not ``PyTMesh.load_array``: that call (pymeshfix
    0.18) never frees its temporary per-vertex connectivity lists, ~130 B per input face leaked per call,
    which made a long-running stage-2 service grow by MiBs per request. MeshFix's file loaders free them; the
    float32 vertices and int32 indices arrive unchanged (the result equals ``load_array``'s).
    """
    import pymeshfix

    if len(faces) == 0:  # nothing to fill (MeshFix's loader would end the process on an empty element list)
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):  # MeshFix's loader would end the process
        raise ValueError(f"face indices must lie in [0, {len(vertices)}): got {faces.min()}..{faces.max()}")
    tmesh = pymeshfix.PyTMesh()
    tmesh.set_quiet(1)  # MeshFix otherwise prints a "% done" line per step to the service's stdout
    with tempfile.TemporaryDirectory(prefix="meshfix-") as folder:
        path = Path(folder, "mesh.ply")
        path.write_bytes(_binary_ply(vertices, faces))
        tmesh.load_file(str(path))
    tmesh.fill_small_boundaries(nbe=max_hole_edges, refine=True)
    out_v, out_f = tmesh.return_arrays()
    return np.asarray(out_v, dtype=np.float32), np.asarray(out_f, dtype=np.int64)


@dataclass
class InteriorReport:
    """What :func:`remove_invisible_faces` did: faces removed by the cut, passes run, faces after filling."""

    removed_by_cut: int
    passes: int
    faces_out: int


def remove_invisible_faces(
    vertices: np.ndarray,
    faces: np.ndarray,
    visibility: torch.Tensor,
    max_hole_size: float = 0.04,
    max_hole_edges: int = 136,
    passes: tuple[CutParams, ...] = UPSTREAM_PASSES,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, InteriorReport]:
    """Cut away invisible interior pieces and fill small holes (upstream pass logic).

    Args:
        vertices: ``[V, 3]`` float; faces ``[F, 3]`` int; visibility ``[F]`` from :func:`face_visibility`.
        max_hole_size: largest area (world units^2) of a new boundary loop a removal may open.
        max_hole_edges: pymeshfix limit (upstream ``int(250 * sqrt(1 - simplify))``, 136 for 0.7).
        on_step: ``on_step(done, 2 * len(passes))`` after every min-cut and every hole filling.
    Returns:
        ``(vertices, faces, report)``; the input is returned unchanged if no face is an inside seed.
    """
    verts_t = torch.from_numpy(np.asarray(vertices, dtype=np.float32))
    faces_t = torch.from_numpy(np.asarray(faces, dtype=np.int64))
    vis = visibility.detach().float().cpu()
    result = (np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64))
    report = InteriorReport(0, 0, len(faces))
    graph = FaceGraph.build(verts_t, faces_t)
    step = on_step or (lambda done, total: None)
    for index, params in enumerate(passes):
        remove = cut_interior(verts_t, faces_t, vis, params, max_hole_size, graph)
        step(2 * index + 1, 2 * len(passes))
        if remove is None:  # nothing to cut: this pass returns the input, the next pass is still tried
            result = (np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64))
            report = InteriorReport(0, index + 1, len(faces))
            continue
        cut_count = int(remove.sum())
        limit = min(15000, len(vertices) * 4 / 5)
        if index < len(passes) - 1 and cut_count <= limit:
            # filling only adds faces, so this pass cannot stop the loop: its result is replaced by the next
            continue
        kept_faces, kept_verts = mesh_graph.remove_unreferenced_vertices(faces_t[~remove], verts_t)
        out_v, out_f = fill_small_holes(kept_verts.numpy(), kept_faces.numpy(), max_hole_edges)
        step(2 * index + 2, 2 * len(passes))
        result = (out_v, out_f)
        report = InteriorReport(cut_count, index + 1, len(out_f))
        if len(faces) - len(out_f) > limit:
            break
    return result[0], result[1], report

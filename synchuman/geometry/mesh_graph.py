"""Mesh connectivity helpers (triangle meshes; faces ``[F, 3]`` long, vertices ``[V, 3]``)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _cc


def compute_edges(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique undirected edges of a triangle mesh.

    Returns ``(edges [E, 2] long, sorted per row; face2edge [F, 3] long, edge k of face f joins corners k and
    k+1; degree [E] long, the number of faces using each edge)``.
    """
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"compute_edges: faces must be [F, 3], got {tuple(faces.shape)}")
    faces = faces.long()
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    half = torch.sort(half, dim=1).values
    stride = int(faces.max()) + 1 if faces.numel() else 1
    keys, inverse, degree = torch.unique(
        half[:, 0] * stride + half[:, 1], return_inverse=True, return_counts=True
    )
    edges = torch.stack([keys // stride, keys % stride], dim=1)
    return edges, inverse.reshape(-1, 3), degree


def compute_dual_graph(face2edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Face adjacency through shared edges.

    Args:
        face2edge: ``[F, 3]`` edge ids per face (from :func:`compute_edges`).
    Returns:
        ``(dual_edges [D, 2] long face pairs, dual_edge2edge [D] long shared edge id)``. An edge used by ``k``
        faces gives every pair among them (non-manifold edges included).
    """
    num_faces = face2edge.shape[0]
    edge_ids = face2edge.reshape(-1)
    face_ids = torch.arange(num_faces, device=face2edge.device).repeat_interleave(3)
    order = torch.argsort(edge_ids, stable=True)
    edge_sorted, face_sorted = edge_ids[order], face_ids[order]
    # pair each (edge, face) entry with the following entries of the same edge (at most a few for real meshes)
    pairs_a, pairs_b, shared = [], [], []
    offset = 1
    while offset < edge_sorted.shape[0]:
        same = edge_sorted[offset:] == edge_sorted[:-offset]
        if not bool(same.any()):
            break
        pairs_a.append(face_sorted[:-offset][same])
        pairs_b.append(face_sorted[offset:][same])
        shared.append(edge_sorted[offset:][same])
        offset += 1
    if not pairs_a:
        empty = torch.zeros(0, dtype=torch.long, device=face2edge.device)
        return empty.reshape(0, 2), empty
    return torch.stack([torch.cat(pairs_a), torch.cat(pairs_b)], dim=1), torch.cat(shared)


def connected_components(num_nodes: int, links: torch.Tensor) -> torch.Tensor:
    """Component label ``[num_nodes]`` long (0..C-1) of a graph given by ``links [L, 2]`` node pairs."""
    links_np = links.detach().cpu().numpy().astype(np.int64).reshape(-1, 2)
    adjacency = coo_matrix(
        (np.ones(len(links_np), dtype=np.int8), (links_np[:, 0], links_np[:, 1])),
        shape=(num_nodes, num_nodes),
    )
    _, labels = _cc(adjacency, directed=False)
    return torch.from_numpy(labels.astype(np.int64)).to(links.device)


def face_components(faces: torch.Tensor) -> torch.Tensor:
    """Edge-connected component label ``[F]`` long of each face."""
    _, face2edge, _ = compute_edges(faces)
    dual, _ = compute_dual_graph(face2edge)
    return connected_components(faces.shape[0], dual)


def edge_components(edges: torch.Tensor) -> torch.Tensor:
    """Component label ``[E]`` long of edges ``[E, 2]`` that are connected when they share a vertex."""
    if edges.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=edges.device)
    verts, local = torch.unique(edges.reshape(-1), return_inverse=True)
    labels = connected_components(verts.shape[0], local.reshape(-1, 2))
    return labels[local.reshape(-1, 2)[:, 0]]


def remove_unreferenced_vertices(
    faces: torch.Tensor, *vertex_attrs: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Drop vertices no face uses. Returns ``(faces [F, 3] reindexed, *attrs [V', ...])``."""
    used, inverse = torch.unique(faces.reshape(-1), return_inverse=True)
    return (inverse.reshape(faces.shape).to(faces.dtype), *(attr[used] for attr in vertex_attrs))


def non_manifold_edge_share(faces: torch.Tensor) -> float:
    """Fraction of edges used by more than two faces."""
    _, _, degree = compute_edges(faces)
    return float((degree > 2).float().mean()) if degree.numel() else 0.0

"""Order-independent comparison of a mesh with a recorded one (vertex matching + canonical faces)."""

from __future__ import annotations

import torch

from synchuman.models.flexicubes import Mesh
from synchuman.parity.registry import Check, Fixture, compare


def match_vertices(
    ours: torch.Tensor, reference: torch.Tensor, chunk: int = 2048
) -> tuple[torch.Tensor, float]:
    """Nearest reference vertex of each of ours (``[V, 3]`` each) -> (indices ``[V]``, max distance)."""
    ref = reference.double()
    index, dist = [], []
    for start in range(0, ours.shape[0], chunk):
        best = torch.cdist(ours[start : start + chunk].double(), ref).min(dim=1)
        index.append(best.indices)
        dist.append(best.values)
    if not index:
        return torch.zeros(0, dtype=torch.long), 0.0
    return torch.cat(index), float(torch.cat(dist).max())


def canonical_order(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces ``[F, 3]`` rotated to start at their smallest index (winding kept) + the sorting row order."""
    k = faces.argmin(dim=1, keepdim=True)
    rotated = torch.cat([faces.gather(1, (k + i) % 3) for i in range(3)], dim=1)
    base = int(faces.max()) + 1 if faces.numel() else 1
    keys = (rotated[:, 0] * base + rotated[:, 1]) * base + rotated[:, 2]
    return rotated, torch.argsort(keys)


def compare_meshes(prefix: str, mesh: Mesh, fixture: Fixture, atol: float) -> list[Check]:
    """Checks of ``mesh`` against ``<prefix>.vertices/faces/vertex_attrs/face_normal`` of the fixture.

    Counts must be equal, every vertex must have a distinct reference vertex within ``atol`` and the faces
    (mapped through that matching, up to order and rotation, winding kept) must be identical; then vertex
    attributes and face normals are compared in matched order.
    """
    ref_v = fixture.tensor(f"{prefix}.vertices")
    ref_f = fixture.tensor(f"{prefix}.faces").long()
    v, f = mesh.vertices.cpu(), mesh.faces.cpu()
    counts_differ = int(v.shape[0] != ref_v.shape[0]) + int(f.shape[0] != ref_f.shape[0])
    detail = f"ours V={v.shape[0]} F={f.shape[0]}, reference V={ref_v.shape[0]} F={ref_f.shape[0]}"
    checks = [Check(f"{prefix}.counts", counts_differ, 0, counts_differ == 0, detail, numeric=False)]
    if counts_differ:
        return checks
    index, max_dist = match_vertices(v, ref_v)
    distinct = index.unique().numel() == index.numel()
    note = "" if distinct else "vertex matching is not one-to-one"
    checks.append(Check(f"{prefix}.vertices", max_dist, atol, distinct and max_dist <= atol, note))
    ours_rot, ours_order = canonical_order(index[f])
    ref_rot, ref_order = canonical_order(ref_f)
    mismatched = int((ours_rot[ours_order] != ref_rot[ref_order]).any(dim=1).sum())
    checks.append(Check(f"{prefix}.faces", mismatched, 0, mismatched == 0, "faces differ", numeric=False))
    if mesh.vertex_attrs is not None and f"{prefix}.vertex_attrs" in fixture.io:
        attrs = torch.empty_like(mesh.vertex_attrs.cpu())
        attrs[index] = mesh.vertex_attrs.cpu()
        ref_attrs = fixture.tensor(f"{prefix}.vertex_attrs")
        checks.append(compare(f"{prefix}.vertex_attrs", attrs, ref_attrs, atol))
    if f"{prefix}.face_normal" in fixture.io and mismatched == 0:
        # our faces (winding included) on the reference vertices: checks orientation without amplifying the
        # vertex tolerance through tiny triangles
        ours_normals = Mesh(ref_v, index[f]).face_normals[ours_order]
        ref_normals = fixture.tensor(f"{prefix}.face_normal")[ref_order]
        checks.append(compare(f"{prefix}.face_normal", ours_normals, ref_normals, atol))
    return checks

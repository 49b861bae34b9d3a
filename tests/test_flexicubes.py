"""FlexiCubes on analytic fields: closed, consistently oriented surfaces; table invariants."""

from __future__ import annotations

import torch

from synchuman.models.flexicubes import _build_tables, flexicubes


def _sphere(res: int = 12, radius: float = 0.3) -> tuple[torch.Tensor, ...]:
    rv = res + 1
    ids = torch.arange(rv**3)
    xyz = torch.stack([ids // (rv * rv), ids // rv % rv, ids % rv], dim=1).float() / res - 0.5
    sdf = xyz.norm(dim=1) - radius
    cube_ids = torch.arange(res**3)
    return ids, xyz, sdf, cube_ids, torch.zeros(res**3, 21)


def test_sphere_is_closed_and_outward() -> None:
    ids, xyz, sdf, cube_ids, weights = _sphere()
    mesh = flexicubes(ids, xyz, sdf, torch.zeros(xyz.shape[0], 6), cube_ids, weights, 12)
    assert mesh.success
    edges = torch.cat([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]])
    directed = set(map(tuple, edges.tolist()))
    assert len(directed) == edges.shape[0]  # every directed edge once: consistently oriented manifold
    assert all((b, a) in directed for a, b in directed)  # closed
    centres = mesh.vertices[mesh.faces].mean(dim=1)
    assert ((mesh.face_normals * centres).sum(dim=1) > 0).float().mean() > 0.99  # normals point outwards
    radius = mesh.vertices.norm(dim=1)
    assert (radius - 0.3).abs().max() < 0.03
    torch.testing.assert_close(mesh.vertex_attrs, torch.full_like(mesh.vertex_attrs, 0.5))


def test_no_surface_gives_empty_mesh() -> None:
    ids, xyz, sdf, cube_ids, weights = _sphere()
    mesh = flexicubes(ids, xyz, sdf.abs() + 0.1, None, cube_ids, weights, 12)
    assert not mesh.success and mesh.faces.shape == (0, 3)


def test_tables() -> None:
    patch_of_edge, num_patches, problem_dir = _build_tables(torch.device("cpu"))
    assert num_patches[0] == 0 and num_patches[255] == 0 and num_patches[1] == 1
    assert num_patches[6] == 2 and num_patches[255 - 6] == 1  # ambiguous face separates inside corners
    assert int((problem_dir.abs().sum(1) > 0).sum()) == 36
    assert ((patch_of_edge >= 0).sum(1) == (patch_of_edge[255 - torch.arange(256)] >= 0).sum(1)).all()

"""Camera helpers, mesh-graph helpers and the PyTorch rasteriser (CPU)."""

from __future__ import annotations

import math

import torch

from synchuman.geometry import camera, mesh_graph
from synchuman.geometry.raster import interpolate, project, rasterize


def test_look_at_is_a_rigid_transform_onto_the_optical_axis() -> None:
    eye, target = torch.tensor([0.3, -2.0, 0.5]), torch.tensor([0.1, 0.0, 0.0])
    extr = camera.look_at(eye, target, torch.tensor([0.0, 0.0, 1.0]))
    rot = extr[:3, :3]
    assert torch.allclose(rot @ rot.T, torch.eye(3), atol=1e-6)
    assert torch.allclose(torch.det(rot), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(extr @ torch.cat([eye, torch.ones(1)]), torch.tensor([0.0, 0, 0, 1]), atol=1e-6)
    cam_target = (extr @ torch.cat([target, torch.ones(1)]))[:3]
    assert torch.allclose(cam_target[:2], torch.zeros(2), atol=1e-6) and cam_target[2] > 0
    # world up appears upwards in the image (camera y points down)
    up_point = (extr @ torch.tensor([0.1, 0.0, 0.5, 1.0]))[:3]
    assert up_point[1] < 0


def test_fov_intrinsics_round_trip_and_projection_matrices_match_project() -> None:
    fov = torch.tensor([0.3, 0.7, math.radians(40)])
    intr = camera.intrinsics_from_fov(fov)
    fx, fy = camera.fov_from_intrinsics(intr)
    assert torch.allclose(fx, fov, atol=1e-6) and torch.allclose(fy, fov, atol=1e-6)
    extr = camera.orbit_extrinsics(torch.tensor([0.4]), torch.tensor([0.2]), 2.0)
    pts = torch.rand(20, 3) - 0.5
    cam = pts @ extr[0, :3, :3].T + extr[0, :3, 3]
    for ortho, k, proj_fn in (
        (False, intr[2:], camera.perspective_projection),
        (True, camera.orthographic_intrinsics(-0.5, 0.5, -0.5, 0.5)[None], camera.orthographic_projection),
    ):
        screen = project(pts, extr, k, ortho, 100, 50)[0]
        clip = torch.cat([cam, torch.ones(20, 1)], 1) @ proj_fn(k[0], 0.1, 10.0).T
        ndc = clip[:, :2] / clip[:, 3:]
        assert torch.allclose((ndc + 1) / 2 * torch.tensor([50.0, 100.0]), screen[:, :2], atol=1e-3)


def test_sphere_hammersley_spreads_views() -> None:
    yaw, pitch = camera.sphere_hammersley(64)
    assert (
        yaw.shape == (64,) and float(pitch.min()) >= -math.pi / 2 - 1e-6 and float(pitch.max()) < math.pi / 2
    )
    assert abs(float(torch.sin(pitch).mean())) < 0.05  # uniform in height


def test_edges_dual_graph_components_and_unreferenced_vertices() -> None:
    faces = torch.tensor([[0, 1, 2], [2, 1, 3], [4, 5, 6]])
    edges, face2edge, degree = mesh_graph.compute_edges(faces)
    assert edges.shape == (8, 2) and int(degree.max()) == 2 and int((degree == 2).sum()) == 1
    shared = edges[degree == 2][0].tolist()
    assert shared == [1, 2]
    dual, dual_edge = mesh_graph.compute_dual_graph(face2edge)
    assert sorted(dual[0].tolist()) == [0, 1] and edges[dual_edge[0]].tolist() == [1, 2]
    labels = mesh_graph.face_components(faces)
    assert labels[0] == labels[1] != labels[2]
    verts = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    new_faces, new_verts = mesh_graph.remove_unreferenced_vertices(torch.tensor([[7, 3, 9]]), verts)
    assert new_verts[:, 0].tolist() == [3, 7, 9] and new_faces.tolist() == [[1, 0, 2]]
    assert mesh_graph.edge_components(torch.tensor([[0, 1], [1, 2], [5, 6]])).tolist() == [0, 0, 1]


def _front_camera(ortho: bool) -> tuple[torch.Tensor, torch.Tensor]:
    extr = camera.orbit_extrinsics(torch.tensor([-math.pi]), torch.tensor([0.0]), 2.0)
    intr = camera.orthographic_intrinsics(-0.5, 0.5, -0.5, 0.5) if ortho else camera.intrinsics_from_fov(0.6)
    return extr, intr[None]


def test_raster_coverage_matches_triangle_area_and_nearest_wins() -> None:
    # two overlapping triangles in the x-z plane, the second nearer the front camera (at y = -2)
    verts = torch.tensor(
        [
            [-0.4, 0.0, -0.4],
            [0.4, 0.0, -0.4],
            [0.0, 0.0, 0.4],
            [-0.4, -0.1, 0.4],
            [0.4, -0.1, 0.4],
            [0.0, -0.1, -0.4],
        ]
    )
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    extr, intr = _front_camera(True)
    out = rasterize(verts[:3], faces[:1], extr, intr, 200, 200, orthographic=True)
    area_px = 0.5 * 0.8 * 0.8 * 200 * 200
    assert abs(int(out.mask.sum()) - area_px) / area_px < 0.02
    both = rasterize(verts, faces, extr, intr, 64, 64, orthographic=True)
    overlap = (both.face_id[0] >= 0) & out.mask[0, :: 200 // 64][:64, :: 200 // 64][:64].new_ones(64, 64)
    centre = both.face_id[0, 32, 32]
    assert int(centre) == 1 and bool(overlap.any())
    assert abs(float(both.depth[0, 32, 32]) - 1.9) < 1e-5


def test_raster_perspective_interpolation_reprojects_to_pixel_centres() -> None:
    verts = torch.tensor([[-0.5, 0.3, -0.5], [0.5, -0.3, -0.4], [0.1, 0.2, 0.5]])
    faces = torch.tensor([[0, 1, 2]])
    extr, intr = _front_camera(False)
    out = rasterize(verts, faces, extr, intr, 48, 48)
    pos = interpolate(verts, faces, out)[0][out.mask[0]]
    screen = project(pos, extr, intr, False, 48, 48)[0]
    ys, xs = torch.nonzero(out.mask[0], as_tuple=True)
    assert torch.allclose(screen[:, 0], xs.float() + 0.5, atol=1e-3)
    assert torch.allclose(screen[:, 1], ys.float() + 0.5, atol=1e-3)
    assert torch.allclose(screen[:, 2], out.depth[0][out.mask[0]], atol=1e-4)
    assert torch.allclose(out.bary[0][out.mask[0]].sum(-1), torch.ones(len(xs)), atol=1e-5)


def test_raster_batches_views_and_large_triangles_in_chunks() -> None:
    verts = torch.tensor([[-0.45, 0.0, -0.45], [0.45, 0.0, -0.45], [0.45, 0.0, 0.45], [-0.45, 0.0, 0.45]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    yaws = torch.tensor([-math.pi, 0.0])
    extr = camera.orbit_extrinsics(yaws, torch.zeros(2), 2.0)
    intr = camera.orthographic_intrinsics(-0.5, 0.5, -0.5, 0.5).expand(2, 3, 3)
    small = rasterize(verts, faces, extr, intr, 40, 40, True, max_candidates=64)
    big = rasterize(verts, faces, extr, intr, 40, 40, True)
    assert torch.equal(small.face_id, big.face_id)
    assert int(big.mask[0].sum()) == 36 * 36 and int(big.mask[1].sum()) == 36 * 36  # seen from both sides

"""Quad remesh (issue 21 item 2): Instant Meshes gives a pure quad mesh; after the UV atlas at least 90 % of
the delivered faces are still quads (a quad whose two triangles fall in different charts is written as its two
triangles), the OBJ keeps them, and the surface stays within one quad edge of the input (Hausdorff)."""

from __future__ import annotations

import numpy as np
import pytest
from benchlib.meshes import body_mesh
from scipy.spatial import cKDTree

from synchuman.postprocess import export, polymesh, quads
from synchuman.postprocess.uv_atlas import parametrize

QUADS = 2_000


def surface_samples(
    vertices: np.ndarray, faces: np.ndarray, count: int, seed: int
) -> tuple[np.ndarray, float]:
    """``count`` points ``[count, 3]`` uniformly on the triangle surface, and its area (box units^2)."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), count, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    t = tri[pick]
    points = t[:, 0] * (1 - r1)[:, None] + t[:, 1] * (r1 * (1 - r2))[:, None] + t[:, 2] * (r1 * r2)[:, None]
    return points, float(area.sum())


@pytest.fixture(scope="module")
def remeshed() -> tuple[np.ndarray, np.ndarray, quads.QuadMesh]:
    verts, faces = body_mesh(100)  # the synthetic person, 20,220 triangles
    return verts, faces, quads.remesh(verts, faces, QUADS)


def test_remesh_gives_quads_near_the_wanted_count(remeshed) -> None:
    _, _, quad_mesh = remeshed
    count = len(quad_mesh.quads)
    print(f"asked {QUADS} quads, got {count}")
    assert abs(count - QUADS) <= 0.15 * QUADS  # Instant Meshes' count is approximate (+6 % here)
    assert quad_mesh.quads.shape[1] == 4 and quad_mesh.quads.max() < len(quad_mesh.vertices)
    tri = quads.triangulate(quad_mesh.quads)
    assert tri.shape == (2 * count, 3)
    np.testing.assert_array_equal(tri[1::2, [0, 1]], quad_mesh.quads[:, [0, 2]])


def test_surface_stays_within_one_quad_edge_of_the_input(remeshed) -> None:
    """Symmetric Hausdorff distance from 300k-point samples of both surfaces (each distance over-estimates
    the point-to-surface distance by at most the sample spacing, ~0.0016 box units here). Bound: one quad
    edge ``e = sqrt(area / quads)``. Instant Meshes snaps its vertices onto the input; a flat quad departs
    from the surface by its sagitta, well under ``e`` on the limbs, but at concave junctions (arm pits,
    crotch) the quads cut across the crease by a fraction of an edge. Measured: 0.68 e at 2,124 quads
    (0.0126 box units, 1.4 % of the body's height), 0.47 e at 8,324 quads."""
    verts, faces, quad_mesh = remeshed
    tri = quads.triangulate(quad_mesh.quads)
    out_points, area = surface_samples(quad_mesh.vertices, tri, 300_000, 1)
    in_points, _ = surface_samples(verts, faces, 300_000, 2)
    forward = cKDTree(in_points).query(out_points[:30_000])[0]
    backward = cKDTree(out_points).query(in_points[:30_000])[0]
    hausdorff = max(forward.max(), backward.max())
    edge = np.sqrt(area / len(quad_mesh.quads))
    print(f"Hausdorff {hausdorff:.4f} box units = {hausdorff / edge:.2f} quad edges (edge {edge:.4f})")
    assert hausdorff <= edge
    assert forward.mean() <= 0.1 * edge


def test_quads_survive_the_atlas_and_the_obj(remeshed) -> None:
    _, _, quad_mesh = remeshed
    tri = quads.triangulate(quad_mesh.quads)
    atlas = parametrize(quad_mesh.vertices, tri, 512, group=2)
    poly = polymesh.from_atlas(atlas, quad_mesh.vertices, quad_pairs=True)
    print(f"quad fraction after the atlas: {poly.quad_fraction:.3f} of {len(poly.counts)} faces")
    assert poly.quad_fraction >= 0.90
    assert 2 * (poly.counts == 4).sum() + (poly.counts == 3).sum() == len(tri)  # every triangle once
    # every corner keeps its position and its atlas UV
    corners = np.repeat(np.arange(len(poly.counts)), poly.counts)
    assert len(corners) == len(poly.corner_uvs)
    np.testing.assert_allclose(
        poly.positions[poly.corner_positions], atlas.vertices[poly.corner_uvs], atol=1e-6
    )
    texture = np.full((64, 64, 3), 128, np.uint8)
    files = export.polygon_obj_files(poly, texture)
    lines = files["model.obj"].decode().splitlines()
    sides = [len(line.split()) - 1 for line in lines if line.startswith("f ")]
    assert sides.count(4) == (poly.counts == 4).sum() and sides.count(3) == (poly.counts == 3).sum()
    assert sum(line.startswith("v ") for line in lines) == len(quad_mesh.vertices)  # welded
    assert b"map_Kd model.png" in files["model.mtl"] and files["model.png"].startswith(b"\x89PNG")


def test_remesh_failure_is_reported() -> None:
    with pytest.raises(quads.QuadRemeshError):
        quads.remesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), 100)

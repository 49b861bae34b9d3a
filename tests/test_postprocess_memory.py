"""Bounded post-processing memory (issue 25, item 3), on the CPU: the rasteriser's chunking (faces in slices,
candidate pixels in chunks) gives the same pixels bit for bit, its working memory follows the chunk budgets
rather than the face count, and a mesh denser than ``max_working_faces`` is decimated to the cap with a
warning (finding DENSE_MESH) while a normal mesh is left exactly as before."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from benchlib.meshes import body_mesh, generated_views
from conftest import REPO_ROOT

from synchuman.geometry import camera
from synchuman.geometry.raster import rasterize
from synchuman.models.flexicubes import Mesh
from synchuman.options import PostprocessOptions
from synchuman.pipelines.stage2 import output_report
from synchuman.pipelines.stage2_types import Severity
from synchuman.postprocess import pipeline
from synchuman.postprocess.checks import CheckLimits
from synchuman.postprocess.visibility import face_visibility


def noisy_mesh(faces: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``faces`` (a multiple of 100) random small triangles in clusters of 50 shared vertices scattered in the
    box (overlapping, both orientations, some degenerate): the kind of surface random weights decode."""
    gen = torch.Generator().manual_seed(seed)
    clusters = faces // 100
    centres = torch.rand(clusters, 1, 3, generator=gen) - 0.5
    verts = (centres + 0.03 * torch.randn(clusters, 50, 3, generator=gen)).reshape(-1, 3)
    tris = (
        torch.randint(0, 50, (clusters, 100, 3), generator=gen) + 50 * torch.arange(clusters)[:, None, None]
    )
    return verts, tris.reshape(-1, 3)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    yaw, pitch = camera.sphere_hammersley(count)
    intrinsics = camera.intrinsics_from_fov(math.radians(40.0)).expand(count, 3, 3)
    return camera.orbit_extrinsics(yaw, pitch, 2.0), intrinsics


def test_chunked_rasterisation_gives_the_same_pixels_bit_for_bit() -> None:
    verts, faces = noisy_mesh(1500)
    extrinsics, intrinsics = cameras(6)
    ortho = torch.tensor([False, True, False, False, True, False])
    whole = rasterize(verts, faces, extrinsics, intrinsics, 80, 72, ortho, max_view_faces=1 << 30)
    assert int((whole.face_id >= 0).sum()) > 1500
    for view_faces, candidates in ((6 * 1500 - 1, 1 << 24), (600, 1 << 24), (6 * 37, 97), (6 * 701, 5000)):
        chunked = rasterize(
            verts, faces, extrinsics, intrinsics, 80, 72, ortho,
            max_candidates=candidates, max_view_faces=view_faces,
        )  # fmt: skip
        assert torch.equal(chunked.face_id, whole.face_id), (view_faces, candidates)
        assert torch.equal(chunked.bary, whole.bary) and torch.equal(chunked.depth, whole.depth)


def test_chunked_visibility_equals_one_pass() -> None:
    verts, faces = noisy_mesh(1000, seed=1)
    whole = face_visibility(verts, faces, 16, 48, max_view_faces=1 << 30)
    assert 0 < float(whole.mean()) < 1
    for views_per_batch, view_faces in ((5, 1000), (16, 100), (1, 1 << 30)):
        chunked = face_visibility(
            verts,
            faces,
            16,
            48,
            views_per_batch=views_per_batch,
            max_candidates=333,
            max_view_faces=view_faces,
        )
        assert torch.equal(chunked, whole), (views_per_batch, view_faces)


PEAK_SCRIPT = (
    """
import json, math, sys, torch
sys.path[:0] = [sys.argv[1]]

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

from synchuman.geometry import camera
from synchuman.geometry.raster import rasterize
"""
    + inspect.getsource(noisy_mesh)
    + inspect.getsource(cameras)
    + """
torch.set_num_threads(1)
verts, faces = noisy_mesh(int(sys.argv[2]))
extrinsics, intrinsics = cameras(4)
rasterize(verts, faces[:100], extrinsics, intrinsics, 8, 8, with_bary=False)  # first-use allocations
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # VmHWM restarts from the current resident size: no earlier peak hides this one
before = status_kib("VmRSS")
rasterize(verts, faces, extrinsics, intrinsics, 256, 256, with_bary=False,
          max_candidates=int(sys.argv[3]), max_view_faces=int(sys.argv[4]))
print(json.dumps((status_kib("VmHWM") - before) / 1024))
"""
)


def _peak_growth_mib(faces: int, candidates: int, view_faces: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(REPO_ROOT), str(faces), str(candidates), str(view_faces)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_rasteriser_working_memory_follows_the_budgets_not_the_face_count() -> None:
    """Peak RSS growth of rasterising 4 views of a 300k-face noisy mesh (150k vertices): with budgets of 2^18
    view-face pairs and 2^18 candidate pixels it stays under 100 MiB (projected vertices, 4 x 256^2 depth
    buffer, one chunk), where one pass over all 1.2M view-face pairs takes about three times more."""
    faces = 300_000
    bounded = _peak_growth_mib(faces, 1 << 18, 1 << 18)
    whole = _peak_growth_mib(faces, 1 << 18, 1 << 30)
    assert bounded < 100, (bounded, whole)
    assert whole > max(2 * bounded, 150), (bounded, whole)  # measured: bounded 35-70, whole 205-250 MiB


SMALL = PostprocessOptions(
    simplify=0.5,
    visibility_views=16,
    visibility_resolution=64,
    texture_size=128,
    bake_steps=5,
    gaussian_views=0,
    limits=CheckLimits(min_faces=200),
)


@pytest.fixture(scope="module")
def body() -> tuple[Mesh, pipeline.GeneratedViews]:
    verts_np, faces_np = body_mesh(40)
    verts, faces = torch.from_numpy(verts_np), torch.from_numpy(faces_np)
    return Mesh(verts, faces), generated_views(verts, faces, 64)


def test_a_mesh_denser_than_the_cap_is_decimated_to_it_with_a_warning(body) -> None:
    mesh, views = body
    faces_in = int(mesh.faces.shape[0])
    cap = faces_in // 4  # simplify 0.5 would keep faces_in / 2
    _, report = pipeline.to_glb(mesh, None, views, replace(SMALL, max_working_faces=cap))
    assert cap - 3 <= report.counts["faces_decimated"] <= cap  # the decimator's rounding
    assert report.counts["faces_capped_from"] == round(faces_in * 0.5)
    (check,) = [c for c in report.checks if c.name == "dense_mesh"]
    assert not check.ok and check.severity == "warning" and check.limit == cap
    assert any("max_working_faces" in w for w in report.warnings)
    finding = next(f for f in output_report(report, 1).findings if f.code == "DENSE_MESH")
    assert finding.severity == Severity.WARNING and str(faces_in) in finding.message


def test_a_mesh_under_the_cap_is_processed_exactly_as_without_one(body) -> None:
    mesh, views = body
    capped, capped_report = pipeline.to_glb(mesh, None, views, SMALL)
    assert SMALL.max_working_faces == 200_000 > mesh.faces.shape[0]
    uncapped, report = pipeline.to_glb(mesh, None, views, replace(SMALL, max_working_faces=0))
    assert capped == uncapped
    assert (
        "dense_mesh" not in {c.name for c in capped_report.checks}
        and "faces_capped_from" not in report.counts
    )
    assert capped_report.counts["faces_decimated"] == round(mesh.faces.shape[0] * 0.5)
    assert np.isclose(capped_report.bake.l1, report.bake.l1)

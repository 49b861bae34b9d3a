"""Optional rasteriser backends (nvdiffrast, Open3D) against the PyTorch rasteriser.

The adapters are checked on the CPU against stand-ins written from the packages' documented contracts
(``raster_doubles.py``); the same comparisons run against the real packages where they are installed
(``bench/bench_raster.py`` does it on the GPU machine with nvdiffrast).
"""

from __future__ import annotations

import math
import sys
from types import ModuleType

import numpy as np
import pytest
import torch
from benchlib.meshes import box_mesh
from raster_doubles import fake_nvdiffrast, fake_open3d

from synchuman.geometry import camera, raster_backends
from synchuman.geometry.raster import RasterOutput, rasterize, resolve_backend


def two_boxes(subdivisions: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A box partly hidden behind a smaller one (occlusion decides the visible face)."""
    v1, f1 = box_mesh(0.3, subdivisions)
    v2, f2 = box_mesh(0.12, 1)
    v2 = v2 + np.array([0.0, -0.35, 0.1], np.float32)
    vertices = np.concatenate([v1, v2]).astype(np.float32)
    faces = np.concatenate([f1, f2 + len(v1)])
    return torch.from_numpy(vertices), torch.from_numpy(faces).long()


def cameras(ortho: bool) -> tuple[torch.Tensor, torch.Tensor]:
    yaw, pitch = camera.sphere_hammersley(3)
    extrinsics = camera.orbit_extrinsics(yaw + 0.3, pitch, 2.0)
    if ortho:
        intrinsics = camera.orthographic_intrinsics(-0.6, 0.6, -0.6, 0.6).expand(3, 3, 3)
    else:
        intrinsics = camera.intrinsics_from_fov(math.radians(40)).expand(3, 3, 3)
    return extrinsics, intrinsics


def assert_matches_torch(out: RasterOutput, ref: RasterOutput) -> None:
    assert out.face_id.shape == ref.face_id.shape and out.face_id.dtype == torch.long
    assert float((out.mask == ref.mask).float().mean()) >= 0.99
    both = out.mask & ref.mask
    same = both & (out.face_id == ref.face_id)
    assert int(both.sum()) > 500 and float(same.sum()) >= 0.98 * float(both.sum())
    assert float((out.depth - ref.depth)[both].abs().max()) < 1e-3
    assert float((out.bary - ref.bary)[same].abs().max()) < 2e-3
    assert torch.allclose(out.bary[same].sum(-1), torch.ones(int(same.sum())), atol=1e-5)
    assert float(out.bary[~out.mask].abs().max()) == 0.0 and float(out.depth[~out.mask].abs().max()) == 0.0


@pytest.mark.parametrize("ortho", [False, True])
def test_open3d_adapter_matches_the_torch_rasteriser(monkeypatch: pytest.MonkeyPatch, ortho: bool) -> None:
    monkeypatch.setitem(sys.modules, "open3d", fake_open3d())
    vertices, faces = two_boxes()
    extrinsics, intrinsics = cameras(ortho)
    ref = rasterize(vertices, faces, extrinsics, intrinsics, 32, 40, ortho)
    out = rasterize(vertices, faces, extrinsics, intrinsics, 32, 40, ortho, backend="open3d")
    assert_matches_torch(out, ref)
    ids_only = rasterize(
        vertices, faces, extrinsics, intrinsics, 32, 40, ortho, backend="open3d", with_bary=False
    )
    assert torch.equal(ids_only.face_id, out.face_id) and ids_only.bary is None


@pytest.mark.parametrize("ortho", [False, True])
def test_nvdiffrast_adapter_matches_the_torch_rasteriser(
    monkeypatch: pytest.MonkeyPatch, ortho: bool
) -> None:
    monkeypatch.setitem(sys.modules, "nvdiffrast", ModuleType("nvdiffrast"))
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", fake_nvdiffrast())
    monkeypatch.setattr(raster_backends, "_contexts", {})
    vertices, faces = two_boxes()
    extrinsics, intrinsics = cameras(ortho)
    ref = rasterize(vertices, faces, extrinsics, intrinsics, 32, 40, ortho)
    flags = torch.full((3,), ortho)
    out = raster_backends.rasterize_nvdiffrast(
        vertices, faces, extrinsics, intrinsics, 32, 40, flags, 1e-3, True
    )
    assert_matches_torch(out, ref)


def test_backend_choice_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    with pytest.raises(ValueError, match="unknown rasteriser backend 'opengl'"):
        resolve_backend("opengl", cpu)
    with pytest.raises(ValueError, match="nvdiffrast rasteriser needs CUDA"):
        resolve_backend("nvdiffrast", cpu)
    with pytest.raises(ValueError, match="open3d rasteriser runs on CPU"):
        resolve_backend("open3d", gpu)
    monkeypatch.setitem(sys.modules, "open3d", None)  # an import of it now fails
    with pytest.raises(ImportError, match="optional package 'open3d'"):
        resolve_backend("open3d", cpu)
    assert resolve_backend("auto", cpu) == "torch"
    monkeypatch.setitem(sys.modules, "open3d", fake_open3d())
    assert resolve_backend("auto", cpu) == "open3d"
    monkeypatch.setitem(sys.modules, "nvdiffrast", None)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", None)
    assert resolve_backend("auto", gpu) == "torch"
    assert resolve_backend("torch", gpu) == "torch"


def test_postprocess_runs_on_the_chosen_rasteriser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The option reaches visibility and bake: the report names the backend; the same faces survive and the
    bake error agrees with the PyTorch rasteriser's run."""
    from benchlib.meshes import generated_views

    from synchuman.models.flexicubes import Mesh
    from synchuman.options import PostprocessOptions
    from synchuman.postprocess import pipeline

    monkeypatch.setitem(sys.modules, "open3d", fake_open3d())
    vertices, faces = two_boxes(subdivisions=8)  # 780 faces: above the output checks' 500
    views = generated_views(vertices, faces, 32)
    options = PostprocessOptions(
        simplify=0.0,
        visibility_views=8,
        visibility_resolution=24,
        texture_size=64,
        bake_steps=5,
        gaussian_views=0,
        raster_backend="open3d",
    )
    glb, report = pipeline.to_glb(Mesh(vertices, faces), None, views, options)
    assert report.backends["visibility"].startswith("open3d") and "open3d" in report.backends["bake"]
    torch_glb, torch_report = pipeline.to_glb(
        Mesh(vertices, faces),
        None,
        views,
        PostprocessOptions(**{**options.__dict__, "raster_backend": "torch"}),
    )
    assert report.counts["faces_out"] == torch_report.counts["faces_out"]
    assert abs(report.bake.l1 - torch_report.bake.l1) < 0.02
    with pytest.raises(ValueError, match="unknown rasteriser backend"):
        pipeline.to_glb(Mesh(vertices, faces), None, views, PostprocessOptions(raster_backend="gl"))


@pytest.mark.parametrize("ortho", [False, True])
def test_real_open3d_matches_the_torch_rasteriser(ortho: bool) -> None:
    pytest.importorskip("open3d", reason="optional backend: open3d is not installed")
    vertices, faces = two_boxes()
    extrinsics, intrinsics = cameras(ortho)
    ref = rasterize(vertices, faces, extrinsics, intrinsics, 32, 40, ortho)
    assert_matches_torch(
        rasterize(vertices, faces, extrinsics, intrinsics, 32, 40, ortho, backend="open3d"), ref
    )

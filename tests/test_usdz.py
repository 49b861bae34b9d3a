"""USDZ output (issue 21 item 3): written with usd-core, textured with a UsdPreviewSurface reading the baked
texture, y-up, metres, quads kept, and accepted by usdchecker's ARKit rules
(``UsdUtils.ComplianceChecker(arkit=True)``, the checker ``usdchecker --arkit`` runs; usd-core ships it as a
Python class, not a command)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from benchlib.meshes import body_mesh

from synchuman.postprocess import polymesh, quads, usd
from synchuman.postprocess.uv_atlas import parametrize


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, polymesh.PolyMesh]:
    verts, faces = body_mesh(48)
    quad_mesh = quads.remesh(verts, faces, 600)
    atlas = parametrize(quad_mesh.vertices, quads.triangulate(quad_mesh.quads), 256, group=2)
    poly = polymesh.from_atlas(atlas, quad_mesh.vertices, quad_pairs=True)
    rows, cols = np.mgrid[0:256, 0:256]
    texture = np.stack([rows, cols, 255 - rows], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("usdz") / "person.usdz"
    path.write_bytes(usd.usdz_bytes(poly, texture))
    return path, poly


def test_usdchecker_arkit_rules_pass(package) -> None:
    from pxr import UsdUtils

    path, _ = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # usd-core 26.x: moving to UsdValidation
        checker = UsdUtils.ComplianceChecker(arkit=True)
    checker.CheckCompliance(str(path))
    print("usdchecker --arkit:", checker.GetErrors(), checker.GetFailedChecks(), checker.GetWarnings())
    assert checker.GetErrors() == [] and checker.GetFailedChecks() == []


def test_the_package_is_a_textured_y_up_metre_quad_mesh(package) -> None:
    from pxr import Usd, UsdGeom, UsdShade

    path, poly = package
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [usd.LAYER_NAME, usd.TEXTURE_NAME]
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Person/Body"))
    counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get())
    np.testing.assert_array_equal(counts, poly.counts)  # quads as quads (this small mesh: 85 % of faces)
    assert (counts == 4).sum() > 0.5 * len(counts)
    assert mesh.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    points = np.asarray(mesh.GetPointsAttr().Get())
    extent = points.max(axis=0) - points.min(axis=0)
    assert extent[1] == pytest.approx(np.ptp(poly.positions[:, 2]), rel=1e-5)  # model z (height) is USD y
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert st.GetInterpolation() == UsdGeom.Tokens.faceVarying and len(st.GetIndices()) == counts.sum()
    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    surface = material.ComputeSurfaceSource()[0]
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    source = surface.GetInput("diffuseColor").GetConnectedSources()[0][0].source
    texture = UsdShade.Shader(source.GetPrim())
    assert texture.GetIdAttr().Get() == "UsdUVTexture"
    assert texture.GetInput("file").Get().path.endswith(usd.TEXTURE_NAME)

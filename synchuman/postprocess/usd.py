"""USDZ of the textured mesh with Pixar's ``usd-core`` (``pxr``): one ``Mesh`` (quads kept) bound to a
``UsdPreviewSurface`` whose base colour is the baked texture, y-up, ``metersPerUnit = 1`` (the GLB's units:
the mesh's box units are metres), packaged for ARKit (``UsdUtils.CreateNewARKitUsdzPackage``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from synchuman.postprocess.export import Z_UP_TO_Y_UP, png_bytes
from synchuman.postprocess.polymesh import PolyMesh

#: Names inside the package.
LAYER_NAME = "person.usdc"
TEXTURE_NAME = "texture.png"


def write_stage(folder: Path, mesh: PolyMesh, texture: np.ndarray, roughness: float = 1.0) -> Path:
    """Write ``folder/person.usdc`` and its texture; returns the layer's path.

    Args:
        mesh: the polygon mesh (z-up; rotated to y-up here).
        texture: ``[T, T, 3]`` uint8, row 0 at ``v = 1`` (written as PNG next to the layer).
        roughness: the preview surface's roughness (metallic is 0).
    """
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdShade, Vt

    (folder / TEXTURE_NAME).write_bytes(png_bytes(texture))
    path = folder / LAYER_NAME
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/Person")
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind(Kind.Tokens.component)

    geom = UsdGeom.Mesh.Define(stage, "/Person/Body")
    points = Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(mesh.positions @ Z_UP_TO_Y_UP, dtype=np.float32))
    geom.CreatePointsAttr(points)
    geom.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(points))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(mesh.counts.astype(np.int32)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(mesh.corner_positions.astype(np.int32)))
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)  # polygons as modelled, not a subdivision surface
    geom.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    st = UsdGeom.PrimvarsAPI(geom).CreatePrimvar(
        "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.faceVarying
    )
    st.Set(Vt.Vec2fArray.FromNumpy(np.ascontiguousarray(mesh.uvs, dtype=np.float32)))
    st.SetIndices(Vt.IntArray.FromNumpy(mesh.corner_uvs.astype(np.int32)))

    material = UsdShade.Material.Define(stage, "/Person/Materials/Skin")
    surface = UsdShade.Shader.Define(stage, "/Person/Materials/Skin/Surface")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(float(roughness))
    reader = UsdShade.Shader.Define(stage, "/Person/Materials/Skin/UV")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    image = UsdShade.Shader.Define(stage, "/Person/Materials/Skin/Texture")
    image.CreateIdAttr("UsdUVTexture")
    image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"./{TEXTURE_NAME}")
    image.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    image.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
    image.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
    image.CreateInput("fallback", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(0.5, 0.5, 0.5, 1.0))
    image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
        image.ConnectableAPI(), "rgb"
    )
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
    stage.GetRootLayer().Save()
    return path


def usdz_bytes(mesh: PolyMesh, texture: np.ndarray, roughness: float = 1.0) -> bytes:
    """The ARKit USDZ package (``person.usdc`` + ``texture.png``) of the textured polygon mesh."""
    from pxr import Sdf, UsdUtils

    with tempfile.TemporaryDirectory(prefix="synchuman-usdz-") as folder:
        layer = write_stage(Path(folder), mesh, texture, roughness)
        package = Path(folder) / "person.usdz"
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(package)):
            raise RuntimeError("usd-core could not write the USDZ package")
        return package.read_bytes()

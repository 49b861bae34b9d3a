"""The optional outputs of the post-processing (``PostprocessOptions.extras``) and the files of a stage-2
result they become (``Stage2Options.outputs``): one code path for the services and the in-process pipeline.

Extras (file name -> bytes in ``PostprocessReport.extras``):

- ``"obj"``: ``model.obj`` + ``model.mtl`` + ``model.png`` (quads kept when remeshed), zipped as
  ``mesh_obj.zip``;
- ``"gaussian_ply"``: ``gaussians.ply`` (3DGS viewer layout);
- ``"usdz"``: ``person.usdz`` (ARKit package, quads kept);
- ``"preview"``: ``preview.png`` (512^2 front 3/4 view), ``turntable.mp4`` and ``turntable.webp``;
- ``"views"``: ``view_<i>.png`` and ``gaussian_view_<i>.png`` (debugging; not a stage output).
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import torch

from synchuman.models.gaussians import Gaussians
from synchuman.options import PREVIEW_FILES, PostprocessOptions
from synchuman.postprocess import bake as bake_mod
from synchuman.postprocess import export, preview, usd
from synchuman.postprocess.polymesh import PolyMesh

#: Files of the "obj" extra (zipped together as ``mesh_obj.zip``).
OBJ_FILES = ("model.obj", "model.mtl", "model.png")


def make_extras(
    options: PostprocessOptions,
    poly: PolyMesh,
    texture: np.ndarray,
    gaussians: Gaussians | None,
    view_colors: np.ndarray | None,
    renders: torch.Tensor | None,
    previews: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, bytes]:
    """The files of the extras named in ``options.extras`` (see the module docstring).

    Args:
        poly: the finished surface as polygons (the GLB's triangles, or its quads).
        texture: ``[T, T, 3]`` uint8 baked texture; view_colors: ``[5, H, W, 3]`` uint8 generated views;
        renders: ``[N, H, W, 3]`` Gaussian renders in [0, 1]; previews: the rendered thumbnail and turntable
        frames (:func:`~synchuman.postprocess.preview.render_previews`), needed for "preview".
    """
    files: dict[str, bytes] = {}
    if "obj" in options.extras:
        files.update(export.polygon_obj_files(poly, texture))
    if "gaussian_ply" in options.extras and gaussians is not None:
        g = gaussians
        fields = (g.xyz, g.features_dc, g.scales, g.quats, g.opacities)
        files["gaussians.ply"] = export.gaussian_ply(*[t.detach().cpu().numpy() for t in fields])
    if "usdz" in options.extras:
        files["person.usdz"] = usd.usdz_bytes(poly, texture)
    if "preview" in options.extras:
        if previews is None:
            raise ValueError("make_extras: the preview extra needs the rendered previews")
        files.update(preview.preview_files(*previews))
    if "views" in options.extras and view_colors is not None:
        for i, image in enumerate(view_colors):
            files[f"view_{i}.png"] = export.png_bytes(np.asarray(image))
    if "views" in options.extras and renders is not None:
        shown = renders[: min(8, len(renders))]
        images = bake_mod.to_uint8(shown.reshape(-1, *shown.shape[2:])).reshape(shown.shape)
        for i, image in enumerate(images):
            files[f"gaussian_view_{i}.png"] = export.png_bytes(image)
    return files


def extra_files(extras: dict[str, bytes], outputs: tuple[str, ...]) -> dict[str, bytes]:
    """The stage-2 output files asked for in ``outputs`` (``Stage2Options.outputs`` names) from the extras:
    the PLY and the USDZ as they are, the OBJ files zipped as ``mesh_obj.zip``, ``"preview.png"`` as the
    three :data:`~synchuman.options.PREVIEW_FILES`."""
    files: dict[str, bytes] = {}
    for name in ("gaussians.ply", "person.usdz"):
        if name in outputs:
            files[name] = extras[name]
    if "preview.png" in outputs:
        files.update({name: extras[name] for name in PREVIEW_FILES})
    if "mesh_obj.zip" in outputs:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in OBJ_FILES:
                archive.writestr(name, extras[name])
        files["mesh_obj.zip"] = buffer.getvalue()
    return files

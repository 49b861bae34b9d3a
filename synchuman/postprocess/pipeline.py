"""Decoded mesh + Gaussians + generated views -> finished GLB (upstream ``to_glb`` behaviour, on device)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from synchuman.geometry import camera
from synchuman.geometry.raster import resolve_backend
from synchuman.models.flexicubes import Mesh
from synchuman.models.gaussians import Gaussians
from synchuman.options import PostprocessOptions
from synchuman.phases import PhaseTimer
from synchuman.postprocess import bake as bake_mod
from synchuman.postprocess import budget, export, polymesh, preview, quads
from synchuman.postprocess import checks as checks_mod
from synchuman.postprocess.decimate import decimate
from synchuman.postprocess.defaults import BAKE_STEPS
from synchuman.postprocess.gaussian_render import render_gaussians
from synchuman.postprocess.outputs import make_extras
from synchuman.postprocess.uv_atlas import parametrize
from synchuman.postprocess.visibility import face_visibility, remove_invisible_faces
from synchuman.progress_phases import ProgressCallback
from synchuman.stage_catalog import POSTPROCESS_PHASES

# generated body views: azimuths of the front, right, back and left orthographic cameras (pitch 0, radius 2)
VIEW_YAWS = (-math.pi, -3 * math.pi / 2, 0.0, -math.pi / 2)
MIRRORED_VIEWS = (2, 3)  # upstream flips these generated images left-right before baking
# face view: pixel region x 256-512, y 0-256 of the 768 front view, as a fraction of the image
FACE_CROP = (256 / 768, 512 / 768, 0.0, 256 / 768)

T = TypeVar("T")

#: Rendered previews: the thumbnail ``[S, S, 3]`` and the turntable frames ``[N, S', S', 3]`` (uint8).
Previews = tuple[np.ndarray, np.ndarray]
#: ``on_step(done, total)`` as the post-processing functions call it.
StepFn = Callable[[int, int], None]
#: Shortest interval between two step reports of one phase (the last step is always reported).
STEP_REPORT_S = 0.25


@dataclass
class GeneratedViews:
    """Stage-1 views.

    Attributes:
        colors: ``[5, H, W, 3]`` uint8: body views 0-3 (azimuths :data:`VIEW_YAWS`, orthographic, +-0.5 box)
            then the face view (the :data:`FACE_CROP` region of view 0, upscaled).
        normals: optional ``[5, H, W, 3]`` uint8 normal views; masks are pixels with a channel < 230
        (upstream).
            Without normals the colour views' non-white pixels are used.
    """

    colors: np.ndarray
    normals: np.ndarray | None = None


@dataclass
class PostprocessReport:
    """What happened: per-phase seconds, sizes, atlas and bake quality, backends, checks and warnings."""

    phases: dict[str, float] = field(default_factory=dict)
    phase_peak_gib: dict[str, float] = field(default_factory=dict)  # CUDA only: peak allocated per phase
    counts: dict[str, int] = field(default_factory=dict)
    atlas_utilization: float = 0.0
    bake: bake_mod.BakeStats | None = None
    backends: dict[str, str] = field(default_factory=dict)
    checks: list[checks_mod.Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extras: dict[str, bytes] = field(default_factory=dict)


class _Phases:
    """Runs the phases through a :class:`~synchuman.phases.PhaseTimer` (time and peak GPU memory into the
    report) and reports their start and steps."""

    names = POSTPROCESS_PHASES

    def __init__(
        self, report: PostprocessReport, device: torch.device, progress: ProgressCallback | None
    ) -> None:
        self.progress = progress or (lambda phase, step, total: None)
        self.timer = PhaseTimer(device)
        self.timer.seconds, self.timer.peak_gib = report.phases, report.phase_peak_gib

    def run(self, name: str, fn: Callable[[StepFn], T]) -> T:
        """``fn(on_step)`` timed as phase ``name``; ``on_step(done, total)`` reports (throttled) steps."""
        assert name in self.names, name
        self.progress(name, 0, 0)
        last = time.monotonic()

        def on_step(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done >= total or now - last >= STEP_REPORT_S:
                last = now
                self.progress(name, done, total)

        if self.timer.device.type == "cuda":
            # hand the blocks the previous phase (or the decoders) cached back to the driver: the process's
            # footprint is then the largest phase's, not the union of every phase's block sizes
            torch.cuda.empty_cache()
        with self.timer(name):
            return fn(on_step)


def generated_bake_views(views: GeneratedViews, device: torch.device) -> list[bake_mod.BakeView]:
    """The 4 orthographic body views and the face view as :class:`~synchuman.postprocess.bake.BakeView`."""
    colors = np.asarray(views.colors)
    if colors.ndim != 4 or colors.shape[0] != 5 or colors.shape[-1] != 3 or colors.dtype != np.uint8:
        raise checks_mod.PostprocessError(
            f"generated views must be uint8 [5, H, W, 3] (4 body views + face view), got {colors.dtype} "
            f"{list(colors.shape)}"
        )
    source = views.normals if views.normals is not None else colors
    masks = np.any(np.asarray(source) < 230, axis=-1)
    yaws = torch.tensor([*VIEW_YAWS, VIEW_YAWS[0]])
    extrinsics = camera.orbit_extrinsics(yaws, torch.zeros(5), 2.0)
    body = camera.orthographic_intrinsics(-0.5, 0.5, -0.5, 0.5)
    u0, u1, v0, v1 = FACE_CROP
    face = camera.orthographic_intrinsics(u0 - 0.5, u1 - 0.5, v0 - 0.5, v1 - 0.5)
    out = []
    for i in range(5):
        image, mask = colors[i], masks[i]
        if i in MIRRORED_VIEWS:
            image, mask = image[:, ::-1], mask[:, ::-1]
        out.append(
            bake_mod.BakeView(
                image=torch.from_numpy(np.ascontiguousarray(image)).to(device).float() / 255,
                mask=torch.from_numpy(np.ascontiguousarray(mask)).to(device),
                extrinsics=extrinsics[i],
                intrinsics=face if i == 4 else body,
                orthographic=True,
            )
        )
    return out


def gaussian_bake_views(
    gaussians: Gaussians, options: PostprocessOptions, on_step: StepFn | None = None
) -> tuple[list[bake_mod.BakeView], str, torch.Tensor]:
    """Render the Hammersley views of the Gaussians (radius 2, fov 40 degrees); mask = any channel > 0.
    ``on_step(views done, views)`` after every batch of renders."""
    yaw, pitch = camera.sphere_hammersley(options.gaussian_views)
    device = gaussians.xyz.device
    extrinsics = camera.orbit_extrinsics(yaw, pitch, 2.0).to(device)
    intrinsics = camera.intrinsics_from_fov(math.radians(40.0)).expand(len(yaw), 3, 3).to(device)
    rgb, _, backend = render_gaussians(
        gaussians,
        extrinsics,
        intrinsics,
        options.gaussian_resolution,
        options.gaussian_kernel,
        options.gaussian_backend,
        on_step=on_step,
    )
    masks = (rgb >= 1 / 255).any(dim=-1)
    views = [
        bake_mod.BakeView(rgb[i], masks[i], extrinsics[i], intrinsics[i], False) for i in range(len(yaw))
    ]
    return views, backend, rgb


def to_glb(
    mesh: Mesh,
    gaussians: Gaussians | None,
    views: GeneratedViews | None,
    options: PostprocessOptions = PostprocessOptions(),
    progress: ProgressCallback | None = None,
) -> tuple[bytes, PostprocessReport]:
    """Post-process a decoded mesh into a textured GLB.

    Steps (upstream order): decimate -> per-face visibility -> interior cut + small-hole fill -> UV atlas ->
    Gaussian renders -> texture bake -> z-up to y-up -> GLB. The mesh is z-up in the ``[-0.5, 0.5]`` box.
    With ``options.target_faces`` the mesh is decimated to the budget after the cut (in the "decimate"
    phase; :mod:`~synchuman.postprocess.budget`); with ``options.quad_remesh`` it is remeshed to quads
    after the cut (phase "remesh"), and the atlas, the bake and the GLB use the quads' triangles. Extras
    (``options.extras``) are written in "export", the previews rendered in "preview".
    ``progress``: a :data:`~synchuman.progress_phases.ProgressCallback`: ``(phase, 0, 0)`` as a phase starts,
    then ``step`` of ``total`` done for the phases with steps (visibility view batches, cut passes, Gaussian
    render batches, bake steps), at most every :data:`STEP_REPORT_S` seconds plus the last step (an
    exception it raises stops the work at the next step).

    Returns:
        ``(glb bytes, report)``. Raises :class:`~synchuman.postprocess.checks.PostprocessError` when an
        error check fails (empty/tiny mesh, nothing left); warnings are listed in the report.
    """
    if gaussians is None and views is None:
        raise checks_mod.PostprocessError(
            "to_glb needs the generated views or the Gaussians to bake a texture"
        )
    if options.bake_mode not in BAKE_STEPS:
        raise ValueError(f"bake_mode must be one of {sorted(BAKE_STEPS)}; got {options.bake_mode!r}")
    options.validate()
    bake_steps = BAKE_STEPS[options.bake_mode] if options.bake_steps is None else options.bake_steps
    device = mesh.vertices.device
    raster = resolve_backend(options.raster_backend, device)
    report = PostprocessReport()
    timer = _Phases(report, device, progress)
    report.checks += checks_mod.check_input_mesh(mesh.vertices, mesh.faces, options.limits)
    report.counts["faces_in"] = int(mesh.faces.shape[0])
    ratio = budget.working_ratio(int(mesh.faces.shape[0]), options, report.checks)
    if report.checks and report.checks[-1].name == "dense_mesh":
        report.counts["faces_capped_from"] = round(report.checks[-1].value)

    verts_np, faces_np = timer.run(
        "decimate",
        lambda on_step: decimate(
            mesh.vertices.detach().cpu().numpy(), mesh.faces.detach().cpu().numpy(), ratio
        ),
    )
    report.counts["faces_decimated"] = len(faces_np)
    report.backends["decimate"] = "fast-simplification"
    if options.fill_holes:
        resolution = budget.visibility_resolution(options, len(faces_np))
        report.counts["visibility_resolution"] = resolution
        vis = timer.run(
            "visibility",
            lambda on_step: face_visibility(
                torch.from_numpy(verts_np).to(device),
                torch.from_numpy(faces_np).to(device),
                options.visibility_views,
                resolution,
                max_candidates=options.raster_candidates,
                backend=raster,
                on_step=on_step,
            ),
        )
        nbe = options.max_hole_edges or int(250 * math.sqrt(1 - ratio))
        verts_np, faces_np, cut = timer.run(
            "cut_fill",
            lambda on_step: remove_invisible_faces(
                verts_np, faces_np, vis, options.max_hole_size, nbe, on_step=on_step
            ),
        )
        report.counts["removed_by_cut"] = cut.removed_by_cut
        report.counts["cut_passes"] = cut.passes
        report.backends["visibility"] = f"{raster} rasteriser ({device.type})"
        report.backends["cut_fill"] = "python-igraph mincut + pymeshfix"
    quad_mesh = None
    if options.quad_remesh:
        wanted = budget.quad_target(options, len(faces_np))
        # the remesh is timed and reported as part of "uv_atlas" (the stage catalog's phase list is closed)
        quad_mesh = timer.run(
            "uv_atlas", lambda on_step: quads.remesh_or_none(verts_np, faces_np, wanted, report.checks)
        )
        report.counts["face_target"] = wanted
        report.backends["remesh"] = "Instant Meshes (pyinstantmeshes, pure quads)"
    if quad_mesh is not None:
        verts_np, faces_np = quad_mesh.vertices, quads.triangulate(quad_mesh.quads)
        report.counts["quads_remeshed"] = len(quad_mesh.quads)
    elif options.target_faces is not None:
        target = options.target_faces
        verts_np, faces_np = timer.run(
            "decimate", lambda on_step: budget.meet_target(verts_np, faces_np, target, report.checks)
        )
        report.counts["face_target"] = target
    group = 2 if quad_mesh is not None else 1
    atlas = timer.run(
        "uv_atlas",
        lambda on_step: parametrize(
            verts_np, faces_np, options.texture_size, options.atlas_fast, group=group
        ),
    )
    poly = polymesh.from_atlas(atlas, verts_np, quad_pairs=quad_mesh is not None)
    report.counts.update(polygons_out=len(poly.counts), quads_out=int((poly.counts == 4).sum()))
    report.atlas_utilization = atlas.utilization
    report.counts["charts"] = atlas.charts
    report.backends["uv_atlas"] = "xatlas (fast pack)" if options.atlas_fast else "xatlas (defaults)"

    bake_views: list[bake_mod.BakeView] = []
    if views is not None:
        bake_views += generated_bake_views(views, device)
    renders = None
    if gaussians is not None and options.gaussian_views > 0:
        g_views, backend, renders = timer.run(
            "gaussian_render", lambda on_step: gaussian_bake_views(gaussians, options, on_step)
        )
        bake_views += g_views
        report.backends["gaussian_render"] = backend

    def _bake(on_step: StepFn) -> tuple[np.ndarray, bake_mod.BakeStats, Previews | None]:
        v = torch.from_numpy(atlas.vertices).to(device)
        f = torch.from_numpy(atlas.faces).to(device)
        uv = torch.from_numpy(atlas.uvs).to(device)
        tex, stats = bake_mod.bake_texture(
            v,
            f,
            uv,
            bake_views,
            options.texture_size,
            options.bake_mode,
            bake_steps,
            options.bake_lambda_tv,
            seed=options.seed,
            raster_backend=raster,
            on_step=on_step,
        )
        texture = bake_mod.to_uint8(tex)
        if "preview" not in options.extras:
            return texture, stats, None
        # the previews are rendered here, on the device (a GPU phase), and encoded in "export"
        shown = preview.preview_mesh(
            atlas.vertices, atlas.faces, atlas.uvs, texture, atlas.vertex_map, device
        )
        frames = preview.render_previews(shown, options.preview_size, options.preview_frames, raster)
        return texture, stats, frames

    texture, stats, previews = timer.run("bake", _bake)
    report.bake = stats
    report.backends["bake"] = f"torch grid_sample ({options.bake_mode}, {device.type}; {raster} rasteriser)"
    if previews is not None:
        report.backends["preview"] = f"{raster} rasteriser ({device.type}); PyAV libx264, Pillow WebP"
    view_colors = views.colors if views is not None else None

    def _export(on_step: StepFn) -> bytes:
        report.checks += checks_mod.check_output(atlas.faces, stats.coverage, options.limits)
        glb = export.glb_bytes(atlas.vertices, atlas.faces, atlas.uvs, texture, metallic=options.metallic)
        made = make_extras(options, poly, texture, gaussians, view_colors, renders, previews)
        report.extras.update(made)
        return glb

    glb = timer.run("export", _export)
    report.counts.update(faces_out=len(atlas.faces), vertices_out=len(atlas.vertices), glb_bytes=len(glb))
    report.warnings += [c.message for c in report.checks if not c.ok and c.severity != "info"]
    return glb, report

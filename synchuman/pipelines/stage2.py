"""Stage-2 pipeline: voxels + generated views + conditioning crop -> textured GLB.

Steps (upstream ``SyncHumanTwoStagePipeline``, run without files):

1. condition: DINOv2 patch tokens of the 518x518 crop (``x_prenorm``, layer-normed without affine)
   ``[1, 1 + registers + 37^2, D]``; the negative condition is zeros.
2. sample the structured latent ``[N, 8]`` on the voxels with the guided flow-Euler sampler (noise from a CPU
   generator seeded with ``options.seed``, so every device draws the same noise), then de-normalise it.
3. multiview features: colour and normal views 0-3 resized to 896^2, DINOv2 intermediate layers concatenated
   ``[1, 4, 64, 64, 4 D]``.
4. decode Gaussians and the FlexiCubes mesh.
5. post-process to GLB (decimate, remove hidden faces, UV atlas, bake the texture from the views and Gaussian
   renders, export y-up) and measure the result.
6. rig (only when ``person_rigged.glb`` is asked for, :mod:`synchuman.pipelines.stage2_rig`): a skinned GLB
   from the body landmarks of the generated views, or a WARNING finding ``RIG_FAILED``.

``progress(phase, step, total)`` is called as every phase starts (``step`` and ``total`` 0) and after its
steps: sampler steps, visibility view batches, min-cut passes, Gaussian render batches and bake steps (phase
names: ``synchuman.stage_catalog.RECONSTRUCTION.phases``). ``should_stop()`` is checked between steps and
phases (raising :class:`Stage2Cancelled`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from synchuman.checkpoints.layout import CheckpointLayout, default_root
from synchuman.checkpoints.verify import weights_label
from synchuman.options import POSTPROCESS_EXTRAS, RIGGED_GLB, OptionError, PostprocessOptions, Stage2Options
from synchuman.phases import PhaseTimer
from synchuman.pipelines.handoff import Stage2InputError, Stage2Inputs
from synchuman.pipelines.info import PipelineInfo
from synchuman.pipelines.stage2_models import Stage2Models, load_stage2_models
from synchuman.pipelines.stage2_rig import rig_step
from synchuman.pipelines.stage2_types import (
    VISIBILITY_RESOLUTION,
    OutputReport,
    QualityFinding,
    Severity,
    Stage2Cancelled,
    Stage2OutputRejected,
    Stage2Result,
    device_defaults,
)
from synchuman.postprocess.checks import PostprocessError
from synchuman.postprocess.outputs import extra_files
from synchuman.postprocess.pipeline import GeneratedViews, PostprocessReport, gaussian_bake_views, to_glb
from synchuman.progress_phases import ProgressCallback
from synchuman.samplers.flow_euler import SamplingCancelled
from synchuman.sparse import SparseTensor
from synchuman.stage_catalog import RIG_PHASE
from synchuman.stopping import check_before_every_layer

#: Views of each kind that condition the decoders (front, right, back, left).
DECODER_VIEWS = 4


class ImageEncoder(Protocol):
    """DINOv2 as stage 2 uses it."""

    def condition(self, crop: np.ndarray) -> torch.Tensor:
        """uint8 ``[518, 518, 3]`` crop -> layer-normed ``x_prenorm`` tokens ``[1, L, D]`` on the device."""
        ...

    def multiview_features(self, views: Sequence[np.ndarray]) -> torch.Tensor:
        """``V`` uint8 ``[768, 768, 3]`` views -> ``[1, V, 64, 64, 4 D]`` intermediate-layer features."""
        ...


class Stage2Pipeline:
    """Loaded stage-2 models plus DINOv2; :meth:`run` runs one person."""

    def __init__(
        self,
        models: Stage2Models,
        dinov2: ImageEncoder,
        info: PipelineInfo,
        render_views: int = 95,
        render_resolution: int = 1024,
        pose_dir: Path | None = None,
    ) -> None:
        """``render_views`` / ``render_resolution``: Gaussian renders added to the texture bake (upstream 95
        at 1024^2; 0 bakes from the generated views only, e.g. on CPU-only machines); ``pose_dir``: the rig
        step's pose model folder (None: :func:`~synchuman.rig.pose_files.pose_model_dir`). The visibility
        views are rendered at :data:`~synchuman.pipelines.stage2_types.VISIBILITY_RESOLUTION` of the device,
        and :attr:`defaults` are the options for the device
        (:func:`~synchuman.pipelines.stage2_types.device_defaults`)."""
        self.models = models
        self.dinov2 = dinov2
        self.info = info
        self.render_views = render_views
        self.render_resolution = render_resolution
        self.pose_dir = pose_dir
        self.voxel_resolution = models.resolution
        device_type = models.device.type
        self.visibility_resolution = VISIBILITY_RESOLUTION.get(device_type, VISIBILITY_RESOLUTION["cuda"])
        self.defaults = device_defaults(device_type)

    @classmethod
    def from_pretrained(
        cls,
        root: str | Path | None = None,
        device: str = "cuda",
        dtype: str = "float16",
        render_views: int = 95,
        render_resolution: int = 1024,
    ) -> Stage2Pipeline:
        """Load the checkpoint tree ``root`` (default ``$SYNCHUMAN_CKPTS`` or ``./ckpts``) onto ``device`` in
        ``dtype`` (``float16``, ``bfloat16``, ``float32``); ``render_views`` / ``render_resolution``: see
        :meth:`__init__`. Like :meth:`~synchuman.pipelines.stage1.Stage1Pipeline.from_pretrained`, it does
        not verify the tree: callers run :func:`~synchuman.checkpoints.verify.require_verified` first, which
        lists every problem at once."""
        layout = CheckpointLayout(Path(root) if root is not None else default_root())
        models = load_stage2_models(layout, device=device, dtype=dtype)
        from synchuman.models.dinov2 import DinoV2Encoder

        dinov2 = DinoV2Encoder.from_checkpoints(layout, device=device, dtype=dtype)
        info = PipelineInfo(str(layout.root), weights_label(layout.root), str(device), str(dtype))
        return cls(models, dinov2, info, render_views, render_resolution, pose_dir=layout.pose)

    # -- one request ---------------------------------------------------------------------------------------

    def run(
        self,
        inputs: Stage2Inputs,
        options: Stage2Options,
        progress: ProgressCallback,
        should_stop: Callable[[], bool],
        keep_geometry: bool = False,
    ) -> Stage2Result:
        """Run stage 2 for one person (see the module docstring); :class:`Stage2Cancelled` when stopped.

        ``keep_geometry``: also return the decoded mesh and Gaussians (else they are freed here)."""
        inputs.validate(self.voxel_resolution)
        try:
            options.validate()
        except OptionError as exc:
            raise Stage2InputError(f"options.{exc.field}", exc.message) from exc
        timer = PhaseTimer(self.models.device)
        try:
            with torch.inference_mode():
                progress("condition", 0, 0)
                with timer("condition"):
                    cond = self.dinov2.condition(inputs.conditioning)
                with timer("sampling"):
                    slat = self._sample(inputs.coords, cond, options, progress, should_stop)
                _check(should_stop)
                progress("multiview_features", 0, 0)
                with timer("multiview_features"), self._stop_inside_networks(should_stop):
                    mv_color = self.dinov2.multiview_features(inputs.colors[:DECODER_VIEWS])
                    mv_normal = self.dinov2.multiview_features(inputs.normals[:DECODER_VIEWS])
                _check(should_stop)
                _release_cached_memory(self.models.device)
                progress("decode", 0, 0)
                with timer("decode"), self._stop_inside_networks(should_stop):
                    gaussians, mesh = self.models.decode(slat, mv_color, mv_normal)
                del mv_color, mv_normal, cond
            _check(should_stop)
            glb, post = to_glb(
                mesh,
                gaussians,
                GeneratedViews(colors=np.stack(inputs.colors), normals=np.stack(inputs.normals)),
                PostprocessOptions(
                    simplify=options.simplify_ratio,
                    target_faces=options.target_faces,
                    quad_remesh=options.quad_remesh,
                    visibility_views=options.visibility_views,
                    visibility_resolution=self.visibility_resolution,
                    texture_size=options.texture_size,
                    bake_mode=options.bake_mode,
                    bake_steps=options.bake_steps,
                    gaussian_views=self.render_views,
                    gaussian_resolution=self.render_resolution,
                    extras=tuple(POSTPROCESS_EXTRAS[n] for n in options.outputs if n in POSTPROCESS_EXTRAS),
                    seed=options.seed,
                ),
                progress=lambda phase, step, total: _progress_step(phase, step, total, progress, should_stop),
            )
        except SamplingCancelled as exc:
            raise Stage2Cancelled(str(exc)) from exc
        except PostprocessError as exc:
            raise Stage2OutputRejected(_rejection_code(str(exc)), str(exc)) from exc
        timer.seconds.update(post.phases)
        timer.peak_gib.update(post.phase_peak_gib)
        files = extra_files(post.extras, options.outputs)
        report = output_report(post, len(glb))
        if RIGGED_GLB in options.outputs:
            progress(RIG_PHASE, 0, 0)
            with timer(RIG_PHASE):
                rig = rig_step(glb, inputs.colors, should_stop, self.pose_dir)
            if rig.glb is not None:
                files[RIGGED_GLB] = rig.glb
            else:
                report = dataclasses.replace(report, findings=(*report.findings, rig.finding))
        return Stage2Result(
            glb=glb,
            extra_files=files,
            report=report,
            phase_seconds=timer.seconds,
            phase_peak_gib=timer.peak_gib,
            mesh=mesh if keep_geometry else None,
            gaussians=gaussians if keep_geometry else None,
        )

    def _stop_inside_networks(self, should_stop: Callable[[], bool]) -> AbstractContextManager[None]:
        """On a CPU, check ``should_stop`` before every layer of DINOv2 and the decoders (one pass of either
        takes seconds there, so a check between passes would not stop within 2 s)."""
        networks = (self.models.decoder_gs, self.models.decoder_mesh, getattr(self.dinov2, "model", None))
        return check_before_every_layer(networks, self.models.device, lambda: _check(should_stop))

    def _sample(
        self,
        coords: np.ndarray,
        cond: torch.Tensor,
        options: Stage2Options,
        progress: ProgressCallback,
        should_stop: Callable[[], bool],
    ) -> SparseTensor:
        """The de-normalised structured latent ``[N, 8]`` on ``coords``; reports ``sampling`` at 0 before the
        first step (like every phase, at its start)."""
        progress("sampling", 0, options.steps)
        return self.models.sample_latent(
            torch.as_tensor(coords, dtype=torch.int32),
            cond,
            seed=options.seed,
            steps=options.steps,
            cfg_strength=options.guidance_scale,
            callback=lambda step, total: progress("sampling", step, total),
            should_stop=should_stop,
            cuda_graph=self.models.device.type == "cuda",
        )

    # -- start-up ------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Run conditioning, one sampler step, both decoders and a one-view 16^2 Gaussian render on a small
        sphere of voxels (no export), so the first request does not pay for lazy initialisation (kernels,
        allocator pools, gsplat's CUDA build when it was not pre-built: ~1 minute), and a renderer that cannot
        work fails the start-up instead of the first job."""
        grid = np.stack(np.meshgrid(*[np.arange(24, 40)] * 3, indexing="ij"), -1).reshape(-1, 3)
        coords = grid[np.linalg.norm(grid - 31.5, axis=1) < 8]
        view = np.full((768, 768, 3), 255, np.uint8)
        crop = np.zeros((518, 518, 3), np.uint8)
        with torch.inference_mode():
            cond = self.dinov2.condition(crop)
            slat = self._sample(coords, cond, Stage2Options(steps=1), lambda *_: None, lambda: False)
            features = self.dinov2.multiview_features((view,) * DECODER_VIEWS)
            gaussians, _ = self.models.decode(slat, features, features)
            gaussian_bake_views(gaussians, PostprocessOptions(gaussian_views=1, gaussian_resolution=16))


#: Post-processing check name -> stable finding code of the output report.
_CHECK_CODES = {
    "faces": "TINY_MESH",
    "extent": "TINY_MESH",
    "faces_out": "TINY_MESH",
    "texture_coverage": "LOW_TEXTURE_COVERAGE",
    "non_manifold_edges": "NON_MANIFOLD",
    "face_target_unreached": "FACE_TARGET_UNREACHED",
}


def _progress_step(
    phase: str, step: int, total: int, progress: ProgressCallback, should_stop: Callable[[], bool]
) -> None:
    """Report a post-processing phase or step, then stop there when asked."""
    progress(phase, step, total)
    _check(should_stop)


def _rejection_code(message: str) -> str:
    return "EMPTY_MESH" if "empty" in message else "TINY_MESH"


def output_report(post: PostprocessReport, glb_size: int) -> OutputReport:
    """The output quality report from the post-processing report (failed checks become findings)."""
    checks = {c.name: c for c in post.checks}
    findings = tuple(
        QualityFinding(
            Severity(c.severity),
            _CHECK_CODES.get(c.name, c.name.upper()),
            c.message,
        )
        for c in post.checks
        if not c.ok
    )
    non_manifold = checks.get("non_manifold_edges")
    return OutputReport(
        vertex_count=int(post.counts.get("vertices_out", 0)),
        face_count=int(post.counts.get("faces_out", 0)),
        texture_coverage=float(post.bake.coverage) if post.bake is not None else 0.0,
        non_manifold_edge_fraction=float(non_manifold.value) if non_manifold is not None else 0.0,
        glb_size_bytes=glb_size,
        findings=findings,
    )


def _release_cached_memory(device: torch.device) -> None:
    """Give the CUDA allocator's unused cached blocks back to the driver (the sampler's and DINOv2's
    workspaces), so the decode phase, the request's largest, starts from what is allocated: its process
    peak is then its own allocation plus the CUDA context, not that plus the earlier phases' cache."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _check(should_stop: Callable[[], bool]) -> None:
    if should_stop():
        raise Stage2Cancelled("stage 2 stopped on request")

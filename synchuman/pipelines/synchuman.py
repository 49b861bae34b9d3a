"""Photo -> textured 3D human in one process: preprocess, stage 1 and stage 2 composed through the hand-off
types (:mod:`synchuman.pipelines.handoff`), the same code the services run.

Usage::

    from synchuman import SyncHumanPipeline

    pipe = SyncHumanPipeline.from_pretrained("ckpts", device="cuda", dtype="float16")
    result = pipe(Image.open("photo.jpg"), generator=torch.Generator().manual_seed(0))
    result.save_glb("person.glb")

Seeds: the services take one integer seed per stage; here ``generator.initial_seed()`` is that seed for both
stages (each stage seeds its own CPU generator from it, as behind the services), so a generator seeded with
``s`` gives the same voxels and mesh as a served job with seed ``s``. Without a generator the stages' default
seeds apply (those of :class:`~synchuman.options.Stage1Options` and
:class:`~synchuman.options.Stage2Options`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from synchuman.checkpoints.layout import CheckpointLayout, default_root
from synchuman.checkpoints.verify import require_verified
from synchuman.options import RIGGED_GLB, PreprocessOptions, Stage1Options, Stage2Options
from synchuman.pipelines.handoff import Stage1Output, stage2_inputs_from
from synchuman.pipelines.stage1 import Stage1Pipeline
from synchuman.pipelines.stage2 import Stage2Pipeline
from synchuman.pipelines.stage2_types import Stage2OutputRejected, Stage2Result
from synchuman.preprocess.pipeline import PreprocessResult, preprocess
from synchuman.preprocess.quality import QualityReport
from synchuman.preprocess.segment import load_segmenter
from synchuman.stage_catalog import MULTIVIEW, PREPROCESS, RECONSTRUCTION

if TYPE_CHECKING:
    from synchuman.models.flexicubes import Mesh
    from synchuman.models.gaussians import Gaussians


@dataclass(frozen=True)
class PipelineProgress:
    """One progress report: ``step`` of ``total`` done in ``phase`` of ``stage`` (its catalog name:
    ``"preprocess"``, ``"multiview"``, ``"reconstruction"``); ``total`` is 0 for a phase without steps
    (reported once, as it starts)."""

    stage: str
    phase: str
    step: int = 0
    total: int = 0


@dataclass
class SyncHumanResult:
    """Everything one photo produced.

    Attributes:
        preprocessed: the framed stage-1 input, the conditioning crop, the person mask and the input report.
        stage1: the generated views and the voxels (:class:`~synchuman.pipelines.handoff.Stage1Output`).
        stage2: the GLB bytes, requested extra files, the output report and phase timings; its ``mesh`` and
            ``gaussians`` are the decoded geometry before post-processing.
    """

    preprocessed: PreprocessResult
    stage1: Stage1Output
    stage2: Stage2Result

    @property
    def input_report(self) -> QualityReport:
        """Measurements and findings of the input photo."""
        return self.preprocessed.report

    @property
    def colors(self) -> np.ndarray:
        """Generated colour views, uint8 ``[5, 768, 768, 3]`` (front, right, back, left, face)."""
        return self.stage1.colors

    @property
    def normals(self) -> np.ndarray:
        """Generated normal views, uint8 ``[5, 768, 768, 3]``."""
        return self.stage1.normals

    @property
    def voxels(self) -> np.ndarray:
        """Occupied voxels, int ``[N, 3]`` (x, y, z) of the ``64^3`` grid."""
        return self.stage1.coords

    @property
    def mesh(self) -> Mesh | None:
        """The decoded FlexiCubes mesh (before decimation and texturing)."""
        return self.stage2.mesh

    @property
    def gaussians(self) -> Gaussians | None:
        """The decoded 3D Gaussians."""
        return self.stage2.gaussians

    @property
    def glb(self) -> bytes:
        """The textured mesh as binary glTF (y up)."""
        return self.stage2.glb

    @property
    def rigged_glb(self) -> bytes | None:
        """The rigged GLB (skinned to a humanoid skeleton, with a sample animation) when it was asked for
        (``rig=True``) and made; None otherwise (the output report then holds a RIG_FAILED warning)."""
        return self.stage2.extra_files.get(RIGGED_GLB)

    def save_glb(self, path: str | Path) -> Path:
        """Write the GLB to ``path``; returns the path."""
        path = Path(path)
        path.write_bytes(self.stage2.glb)
        return path


class SyncHumanPipeline:
    """The three stages loaded in this process; calling it turns one photo into a :class:`SyncHumanResult`."""

    def __init__(
        self,
        stage1: Stage1Pipeline,
        stage2: Stage2Pipeline,
        preprocess_options: PreprocessOptions | None = None,
    ) -> None:
        self.stage1 = stage1
        self.stage2 = stage2
        self.preprocess_options = (preprocess_options or PreprocessOptions()).validate()

    @classmethod
    def from_pretrained(
        cls,
        root: str | Path | None = None,
        device: str = "cuda",
        dtype: str = "float16",
        render_views: int | None = None,
        render_resolution: int = 1024,
        segmenter: str = "",
    ) -> SyncHumanPipeline:
        """Verify and load every stage from the checkpoint tree ``root`` (default ``$SYNCHUMAN_CKPTS`` or
        ``./ckpts``).

        Args:
            device / dtype: where the models run and their parameter dtype (``float16``, ``bfloat16``,
                ``float32``).
            render_views / render_resolution: Gaussian renders added to the texture bake (``None``: 95 as
                upstream on CUDA, 0 on the CPU, like the stage-2 service).
            segmenter: person segmentation model name in ``root/segmentation`` ("" = the default).
        Raises:
            CheckpointError: listing every problem of the tree; SegmenterError: the segmenter is missing.
        """
        layout = CheckpointLayout(Path(root) if root is not None else default_root())
        options = PreprocessOptions(segmenter=segmenter, segmentation_dir=layout.segmentation)
        load_segmenter(options.segmenter, options.segmentation_dir)  # fail now, not on the first photo
        require_verified(layout.root, ("dinov2", "stage1", "stage2"))
        stage1 = Stage1Pipeline.from_pretrained(layout.root, device, dtype)
        if render_views is None:
            render_views = 0 if torch.device(device).type == "cpu" else 95
        stage2 = Stage2Pipeline.from_pretrained(
            layout.root, device, dtype, render_views=render_views, render_resolution=render_resolution
        )
        return cls(stage1, stage2, options)

    def __call__(
        self,
        photo: Image.Image | bytes,
        generator: torch.Generator | None = None,
        callback: Callable[[PipelineProgress], None] | None = None,
        stage1_options: Stage1Options | None = None,
        stage2_options: Stage2Options | None = None,
        should_stop: Callable[[], bool] | None = None,
        rig: bool = False,
    ) -> SyncHumanResult:
        """Turn one photo of a person into a textured 3D human.

        Args:
            photo: the photo's file bytes (JPEG, PNG, WebP, ...) or a Pillow image (EXIF orientation applied).
            generator: its ``initial_seed()`` seeds both stages, over the options' seeds (see the module
                docstring).
            callback: called with a :class:`PipelineProgress` as each phase starts and after every sampler
                step.
            stage1_options / stage2_options: sampler and post-processing options (defaults: the services';
                stage 2's are those of its device: the small CPU ones on a CPU, as the stage-2 service).
            should_stop: checked between steps and phases; true stops with ``SamplingCancelled`` (stage 1)
                or ``Stage2Cancelled`` (stage 2).
            rig: also rig the person for animation (the same as ``"person_rigged.glb"`` in
                ``stage2_options.outputs``): :attr:`SyncHumanResult.rigged_glb`, or a RIG_FAILED warning in
                the output report when no usable pose was found.
        Raises:
            OptionError: an option is out of range; PreprocessError (e.g. ``QualityGateError`` for an empty
            person mask): the photo is unusable; Stage2OutputRejected: the mesh is empty or tiny (the output
            checks found an error: a served job fails the same way).
        """
        report = callback or (lambda progress: None)
        stop = should_stop or (lambda: False)
        multiview_options = (stage1_options or Stage1Options()).validate()
        reconstruction_options = (stage2_options or self.stage2.defaults).validate()
        if rig and RIGGED_GLB not in reconstruction_options.outputs:
            outputs = (*reconstruction_options.outputs, RIGGED_GLB)
            reconstruction_options = dataclasses.replace(reconstruction_options, outputs=outputs)
        if generator is not None:
            seed = generator.initial_seed()
            multiview_options = dataclasses.replace(multiview_options, seed=seed).validate()
            reconstruction_options = dataclasses.replace(reconstruction_options, seed=seed).validate()
        preprocessed = preprocess(
            photo,
            self.preprocess_options,
            progress=lambda phase: report(PipelineProgress(PREPROCESS.name, phase)),
        )
        stage1 = self.stage1.run(
            preprocessed.framed,
            preprocessed.conditioning,
            multiview_options,
            callback=lambda step, total: report(PipelineProgress(MULTIVIEW.name, "sampling", step, total)),
            should_stop=stop,
        )
        stage2 = self.stage2.run(
            stage2_inputs_from(stage1, preprocessed.conditioning),
            reconstruction_options,
            lambda phase, step, total: report(PipelineProgress(RECONSTRUCTION.name, phase, step, total)),
            stop,
            keep_geometry=True,
        )
        errors = stage2.report.errors
        if errors:
            raise Stage2OutputRejected(errors[0].code, "; ".join(f"{e.code}: {e.message}" for e in errors))
        return SyncHumanResult(preprocessed=preprocessed, stage1=stage1, stage2=stage2)

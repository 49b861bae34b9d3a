"""The stage-2 backend: :class:`synchuman.pipelines.stage2.Stage2Pipeline` loaded from a verified checkpoint
tree, as a :class:`~services.common.backend.StageBackend`: core
:class:`~synchuman.pipelines.handoff.Stage2Inputs` and
:class:`~synchuman.pipelines.stage2_types.Stage2Options` in,
:class:`~synchuman.pipelines.stage2_types.Stage2Result` out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.backend import Progress, StopCheck, verified_checkpoints
from synchuman.pipelines.handoff import Stage2Inputs
from synchuman.pipelines.info import PipelineInfo
from synchuman.pipelines.stage2_types import Stage2Options, Stage2Result

#: Checkpoint sections stage 2 loads (verified before loading).
CHECKPOINT_SECTIONS = ("dinov2", "stage2")


class Stage2PipelineBackend:
    """The stage-2 pipeline behind the Stage2Service."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.voxel_resolution: int = pipeline.voxel_resolution
        self._info: PipelineInfo = pipeline.info
        #: Options for unset request fields on this device (small on a CPU, upstream's on a GPU).
        self.defaults: Stage2Options = pipeline.defaults

    @classmethod
    def load(
        cls,
        root: Path | None,
        device: str,
        dtype: str,
        render_views: int = 95,
        render_resolution: int = 1024,
    ) -> Stage2PipelineBackend:
        """Verify (every problem listed at once) and load the stage-2 checkpoints under ``root``;
        ``render_views`` Gaussian renders of ``render_resolution``^2 join the texture bake."""
        from synchuman.pipelines.stage2 import Stage2Pipeline

        layout = verified_checkpoints(root, CHECKPOINT_SECTIONS)
        return cls(
            Stage2Pipeline.from_checkpoints(
                layout.root,
                device,
                dtype,
                render_views=render_views,
                render_resolution=render_resolution,
            )
        )

    def info(self) -> PipelineInfo:
        """What is loaded, from where, on which device."""
        return self._info

    def warm_up(self) -> None:
        """One small stage-2 run without export (kernels, allocator pools, the Gaussian renderer's build)."""
        self.pipeline.warm_up()

    def run(
        self, inputs: Stage2Inputs, options: Stage2Options, progress: Progress, should_stop: StopCheck
    ) -> Stage2Result:
        """Reconstruct one person: ``progress(phase, step, total)`` per sampler step and once per later phase;
        stops (raising) once ``should_stop()``."""
        return self.pipeline.run(inputs, options, progress, should_stop)

    def close(self) -> None:
        """Drop the pipeline (the runtime then returns the cached GPU memory)."""
        self.pipeline = None

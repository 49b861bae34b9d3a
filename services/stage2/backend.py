"""The stage-2 backend: :class:`synchuman.pipelines.stage2.Stage2Pipeline` loaded from a verified checkpoint
tree, as a :class:`~services.common.backend.StageBackend`: core
:class:`~synchuman.pipelines.handoff.Stage2Inputs` and
:class:`~synchuman.options.Stage2Options` in,
:class:`~synchuman.pipelines.stage2_types.Stage2Result` out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from services.common.backend import StopCheck, verified_checkpoints
from services.common.gpu_share import DEFAULT_MAX_WAIT_S, GpuTurn, YieldingStopCheck
from synchuman.options import Stage2Options
from synchuman.pipelines.handoff import Stage2Inputs
from synchuman.pipelines.info import PipelineInfo
from synchuman.pipelines.stage2_types import Stage2Result
from synchuman.progress_phases import ProgressCallback
from synchuman.rig.pose_files import FETCH_HINT, missing_pose_files
from synchuman.stage_catalog import RECONSTRUCTION

log = logging.getLogger(__name__)

#: Post-processing phases and the rig step, which run on the CPU: they go on while stage 1 holds the GPU.
HOST_PHASES = frozenset({"decimate", "cut_fill", "uv_atlas", "export", "rig"})


class Stage2PipelineBackend:
    """The stage-2 pipeline behind the Stage2Service."""

    def __init__(
        self, pipeline: Any, gpu_turn: GpuTurn | None = None, max_wait_s: float = DEFAULT_MAX_WAIT_S
    ) -> None:
        self.pipeline = pipeline
        #: Both stages on one GPU: GPU phases pause while stage 1 runs (at most ``max_wait_s`` per request).
        self.gpu_turn = gpu_turn
        self.max_wait_s = max_wait_s
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
        gpu_turn: GpuTurn | None = None,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> Stage2PipelineBackend:
        """Verify (every problem listed at once) and load the stage-2 checkpoints under ``root``;
        ``render_views`` Gaussian renders of ``render_resolution``^2 join the texture bake; ``gpu_turn``: the
        GPU is shared with stage 1, which goes first (``max_wait_s``: longest total pause per request)."""
        from synchuman.pipelines.stage2 import Stage2Pipeline

        layout = verified_checkpoints(root, RECONSTRUCTION.checkpoint_sections)
        missing = missing_pose_files(layout.pose)
        if missing:
            log.warning(
                "pose model missing: rigged-GLB requests will end with the warning RIG_FAILED (%s)",
                FETCH_HINT,
                extra={"missing": [str(path) for path in missing]},
            )
        return cls(
            Stage2Pipeline.from_pretrained(
                layout.root,
                device,
                dtype,
                render_views=render_views,
                render_resolution=render_resolution,
            ),
            gpu_turn,
            max_wait_s,
        )

    def info(self) -> PipelineInfo:
        """What is loaded, from where, on which device."""
        return self._info

    def warm_up(self) -> None:
        """One small stage-2 run without export (kernels, allocator pools, the Gaussian renderer's build)."""
        self.pipeline.warm_up()

    def run(
        self, inputs: Stage2Inputs, options: Stage2Options, progress: ProgressCallback, should_stop: StopCheck
    ) -> Stage2Result:
        """Reconstruct one person: ``progress(phase, step, total)`` per sampler step and once per later phase;
        stops (raising) once ``should_stop()``. With a GPU turn, every check point of a GPU phase first waits
        while stage 1 works (:class:`~services.common.gpu_share.YieldingStopCheck`)."""
        if self.gpu_turn is None:
            return self.pipeline.run(inputs, options, progress, should_stop)
        check = YieldingStopCheck(self.gpu_turn, should_stop, self.max_wait_s)

        def track_phase(phase: str, step: int, total: int) -> None:
            check.host_only = phase in HOST_PHASES
            progress(phase, step, total)

        try:
            return self.pipeline.run(inputs, options, track_phase, check)
        finally:
            log.info("GPU yielded to stage 1", extra={"seconds": round(check.yielded_s, 3)})

    def close(self) -> None:
        """Drop the pipeline (the runtime then returns the cached GPU memory)."""
        self.pipeline = None

"""The real stage-1 backend: :mod:`synchuman.pipelines.stage1` loaded from a verified checkpoint tree.

The adapter expects ``Stage1Pipeline.from_checkpoints(layout, device=, dtype=)``, its ``voxel_resolution``,
and ``run(framed, conditioning, *, seed, steps, guidance_scale, callback, should_stop)`` returning an object
with ``colors`` / ``normals`` (5 uint8 ``[768, 768, 3]`` each) and ``coords`` (int ``[N, 3]``); this file is
the one place that binds the service to that interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.common.stage_runtime import BackendInfo
from services.stage1.service import GeneratedViews, MultiviewSettings

log = logging.getLogger(__name__)


def check_second_device(device: str, cfg_device: str) -> None:
    """``ValueError`` unless ``cfg_device`` is an existing CUDA device other than ``device``."""
    import torch

    main, second = torch.device(device), torch.device(cfg_device)
    if second.type != "cuda" or main.type != "cuda":
        raise ValueError(f"--cfg-device {cfg_device}: CFG-parallel needs two CUDA devices (main: {device})")
    count = torch.cuda.device_count()
    main_index, second_index = main.index or 0, second.index or 0
    if second_index >= count:
        raise ValueError(f"--cfg-device {cfg_device}: this machine has {count} CUDA device(s)")
    if second_index == main_index:
        raise ValueError(f"--cfg-device {cfg_device} is the main device ({device}); name a second GPU")


class Stage1PipelineBackend:
    """Adapts the core stage-1 pipeline to :class:`services.stage1.service.Stage1Backend`.

    Every pipeline call (warm-up included) runs on one long-lived thread: torch.compile's CUDA graphs
    (``--compile`` with ``--cfg-device``) are recorded per Python thread, so a thread per request would record
    them again for every request instead of replaying the warm-up's.
    """

    def __init__(self, pipeline: object, info: BackendInfo, voxel_resolution: int) -> None:
        self.pipeline = pipeline
        self.info = info
        self.voxel_resolution = voxel_resolution
        self._gpu_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage1-gpu")

    @classmethod
    def load(
        cls,
        root: Path | None,
        device: str,
        dtype: str,
        compile_model: bool = False,
        cfg_device: str | None = None,
        cuda_graphs: bool | None = None,
    ) -> Stage1PipelineBackend:
        """Verify (every problem listed at once) and load the stage-1 checkpoints under ``root``;
        ``compile_model``: ``torch.compile`` the diffusion model (compiled by the warm-up call);
        ``cfg_device``: a second CUDA device for the unconditional CFG half (``ValueError`` if unusable);
        ``cuda_graphs``: replay the compiled forwards as CUDA graphs (``None``: only with ``cfg_device``)."""
        from synchuman.checkpoints.layout import CheckpointLayout, default_root
        from synchuman.checkpoints.verify import require_verified, weights_label
        from synchuman.pipelines.stage1 import Stage1Pipeline

        if cfg_device is not None:
            check_second_device(device, cfg_device)
        layout = CheckpointLayout(root or default_root())
        require_verified(layout.root, ("dinov2", "stage1"))
        pipeline = Stage1Pipeline.from_checkpoints(layout, device=device, dtype=dtype)
        if cfg_device is not None:
            pipeline.enable_cfg_parallel(cfg_device)
            device = f"{device} + {cfg_device} (CFG-parallel)"
            if not compile_model:
                log.warning(
                    "CFG-parallel without --compile: one host thread launching both GPUs' kernels sets the "
                    "pace, so it is no faster than one GPU (bench/RESULTS.md); add --compile"
                )
        if cuda_graphs is None:
            # with two devices, CUDA graphs keep one host thread from being the bottleneck (bench/RESULTS.md)
            cuda_graphs = cfg_device is not None
        if cuda_graphs and not compile_model:
            raise ValueError("CUDA graphs replay the compiled model: --cuda-graphs on needs --compile")
        if compile_model:
            pipeline.accelerate(compile_model=True, cuda_graphs=cuda_graphs)
        info = BackendInfo(str(layout.root), weights_label(layout.root), device, dtype)
        return cls(pipeline, info, pipeline.voxel_resolution)

    def warm_up(self) -> None:
        """One sampler step on a blank input: kernels and allocator pools exist before the first request."""
        framed = np.zeros((768, 768, 4), np.uint8)
        framed[192:576, 288:480] = 255
        crop = np.zeros((518, 518, 3), np.uint8)
        # 3 steps: compiled CUDA graphs are warmed up on a function's first call and recorded on a later one
        self.generate(framed, crop, MultiviewSettings(steps=3), lambda step, total: None, lambda: False)

    def generate(
        self,
        framed: np.ndarray,
        conditioning: np.ndarray,
        settings: MultiviewSettings,
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedViews:
        """Run the pipeline on the GPU thread (see :class:`services.stage1.service.Stage1Backend`)."""
        run = self.pipeline.run  # type: ignore[attr-defined]
        out = self._gpu_thread.submit(
            run,
            framed,
            conditioning,
            seed=settings.seed,
            steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            callback=progress,
            should_stop=should_stop,
        ).result()
        return GeneratedViews(
            colors=tuple(out.colors), normals=tuple(out.normals), coords=np.asarray(out.coords)
        )

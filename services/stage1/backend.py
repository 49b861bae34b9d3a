"""The stage-1 backend: :class:`synchuman.pipelines.stage1.Stage1Pipeline` loaded from a verified checkpoint
tree, as a :class:`~services.common.backend.StageBackend` of :class:`Stage1Inputs` and
:class:`~synchuman.options.Stage1Options` to :class:`~synchuman.pipelines.handoff.Stage1Output`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.backend import StopCheck, verified_checkpoints
from services.stage1.compile_cache import aot_package_dir, cache_state, log_cache_state
from synchuman.options import Stage1Options
from synchuman.pipelines.handoff import Stage1Output
from synchuman.pipelines.info import PipelineInfo
from synchuman.progress_phases import ProgressCallback
from synchuman.stage_catalog import MULTIVIEW

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage1Inputs:
    """What stage 1 runs on (preprocess's outputs): ``framed`` RGBA uint8 ``[768, 768, 4]``, the person
    centred; ``conditioning`` RGB uint8 ``[518, 518, 3]``, the crop premultiplied on black."""

    framed: np.ndarray
    conditioning: np.ndarray


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
    """The stage-1 pipeline behind the Stage1Service.

    Every pipeline call (warm-up included) runs on one long-lived thread: torch.compile's CUDA graphs
    (``--compile`` with ``--cfg-device``) are recorded per Python thread, so a thread per request would record
    them again for every request instead of replaying the warm-up's.
    """

    def __init__(self, pipeline: Any, info: PipelineInfo, voxel_resolution: int) -> None:
        self.pipeline = pipeline
        self._info = info
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
        fp8: bool = False,
        compiler: str = "torch.compile",
    ) -> Stage1PipelineBackend:
        """Verify (every problem listed at once) and load the stage-1 checkpoints under ``root``;
        ``compile_model``: compile the diffusion model (by the warm-up call; see ``compiler``);
        ``cfg_device``: a second CUDA device for the unconditional CFG half (``ValueError`` if unusable);
        ``cuda_graphs``: replay the compiled forwards as CUDA graphs (``None``: only with ``cfg_device``);
        ``fp8``: the diffusion model's large Linear layers in FP8 (``stage1_acceleration.use_fp8``);
        ``compiler``: with ``compile_model``, ``"torch.compile"`` or the experimental ``"aot"`` (an
        ahead-of-time compiled package in the compile cache directory, built by the first start's warm-up,
        verified in a child process and loaded by later starts; one device without CUDA graphs only, else
        torch.compile)."""
        from synchuman.checkpoints.verify import weights_label
        from synchuman.pipelines import stage1_acceleration
        from synchuman.pipelines.stage1 import Stage1Pipeline

        if cfg_device is not None:
            check_second_device(device, cfg_device)
        layout = verified_checkpoints(root, MULTIVIEW.checkpoint_sections)
        pipeline = Stage1Pipeline.from_pretrained(layout.root, device, dtype)
        if cfg_device is not None:
            stage1_acceleration.enable_cfg_parallel(pipeline, cfg_device)
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
        if fp8:
            stage1_acceleration.use_fp8(pipeline)
        if compile_model:
            state = cache_state()
            log_cache_state(state)
            ahead_of_time = compiler == "aot" and cfg_device is None and not cuda_graphs
            if compiler == "aot" and not ahead_of_time:
                log.warning(
                    "no ahead-of-time package with CUDA graphs or CFG-parallel: torch.compile compiles the "
                    "model in the warm-up (its caches make restarts faster, not as fast as a package)"
                )
            elif ahead_of_time:
                log.warning(
                    "--compiler aot is experimental (a new package crashed the process on an H200): each new "
                    "package is run in a child process first and used only if it matches the eager model"
                )
            package_dir = aot_package_dir(state) if ahead_of_time else None
            stage1_acceleration.accelerate(
                pipeline, compile_model=True, cuda_graphs=cuda_graphs, package_dir=package_dir
            )
        info = PipelineInfo(str(layout.root), weights_label(layout.root), device, dtype)
        return cls(pipeline, info, pipeline.voxel_resolution)

    def info(self) -> PipelineInfo:
        """What is loaded, from where, on which device(s)."""
        return self._info

    def warm_up(self) -> None:
        """Three sampler steps on a blank input: kernels and allocator pools exist before the first
        request."""
        framed = np.zeros((768, 768, 4), np.uint8)
        framed[192:576, 288:480] = 255
        crop = np.zeros((518, 518, 3), np.uint8)
        # 3 steps: compiled CUDA graphs are warmed up on a function's first call and recorded on a later one
        self.run(Stage1Inputs(framed, crop), Stage1Options(steps=3), lambda *event: None, lambda: False)

    def run(
        self, inputs: Stage1Inputs, options: Stage1Options, progress: ProgressCallback, should_stop: StopCheck
    ) -> Stage1Output:
        """Run the pipeline on the GPU thread; ``progress("sampling", step, steps)`` after every sampler step;
        stops (raising) once ``should_stop()``. ``("sampling", 0, steps)`` first, as the request starts."""
        progress("sampling", 0, options.steps)
        return self._gpu_thread.submit(
            self.pipeline.run,
            inputs.framed,
            inputs.conditioning,
            options,
            callback=lambda step, total: progress("sampling", step, total),
            should_stop=should_stop,
        ).result()

    def close(self) -> None:
        """Stop the GPU thread and drop the pipeline (the runtime then returns the cached GPU memory)."""
        self._gpu_thread.shutdown(wait=True)
        self.pipeline = None

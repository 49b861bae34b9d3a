"""Opt-in speed-ups of stage 1's diffusion model (:class:`~synchuman.pipelines.stage1.Stage1Pipeline`).

Set up in this order, each before the next:

1. :func:`enable_cfg_parallel`: a replica of the diffusion model on a second device computes the
   unconditional half of every guided step while the main device computes the conditional half (the two
   halves are independent within a step), halving the loop's time for one request on two GPUs;
   :func:`parallel_velocity` is the sampler's velocity function then.
2. :func:`use_fp8`: the large Linear layers as FP8 matrix products.
3. :func:`accelerate`: ``torch.compile`` (optionally replayed as CUDA graphs) or an ahead-of-time package.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from synchuman.nn.fp8_linear import (
    DEFAULT_MIN_WEIGHT_ELEMENTS,
    FP8Unavailable,
    Granularity,
    convert_linears_to_fp8,
    require_fp8,
)
from synchuman.pipelines.compiled_model import AotCompiledModel
from synchuman.pipelines.handoff import NUM_VIEWS

if TYPE_CHECKING:
    from synchuman.pipelines.stage1 import Stage1Pipeline

log = logging.getLogger(__name__)

#: Diffusion submodules that stay in half precision with :func:`use_fp8`: the timestep / class embeddings see
#: a few rows per step (nothing to gain), and the model casts inputs to their weights' dtype.
FP8_KEEP = ("time_embedding", "class_embedding", "t_embedder")

#: ``(unconditional, conditional)`` velocities, fp32 on the main device.
Pair = tuple[torch.Tensor, torch.Tensor]
#: ``velocity(latents, structure, timestep) -> ((uncond_2d, cond_2d), (uncond_3d, cond_3d))``
Velocity = Callable[[torch.Tensor, torch.Tensor, float], tuple[Pair, Pair]]


def _require_eager(pipeline: Stage1Pipeline, step: str) -> None:
    """``RuntimeError`` when :func:`accelerate` already wrapped the diffusion model."""
    if hasattr(pipeline.diffusion, "_orig_mod") or not isinstance(pipeline.diffusion, nn.Module):
        raise RuntimeError(f"{step} must come before accelerate() (the model is compiled)")


def enable_cfg_parallel(pipeline: Stage1Pipeline, device: str | torch.device) -> None:
    """Run the unconditional half of classifier-free guidance on a replica of the diffusion model on
    ``device`` (call before :func:`accelerate`). Each step then runs two batch-10 forwards (one per device,
    concurrently) instead of one batch-20 forward; per step the latents go over (fp32 ``[10, 4, h, w]`` +
    ``[1, 8, G, G, G]``) and the unconditional velocities come back: ~2.3 MB at full size. Same function as
    the joint batch up to floating-point summation order."""
    _require_eager(pipeline, "enable_cfg_parallel")
    device = torch.device(device)
    pipeline.cfg_diffusion = copy.deepcopy(pipeline.diffusion).to(device)
    pipeline.cfg_device = device


def fp8_keep(model: nn.Module) -> tuple[str, ...]:
    """Submodules of ``model`` whose Linear layers :func:`use_fp8` leaves in half precision: :data:`FP8_KEEP`
    and the q/k/v projections of every attention module with a fused ``qkv`` (it multiplies with their
    concatenated weights)."""
    fused = [
        f"{name}.{projection}"
        for name, module in model.named_modules()
        if callable(getattr(module, "qkv", None))
        for projection in ("to_q", "to_k", "to_v")
        if isinstance(getattr(module, projection, None), nn.Linear)
    ]
    return (*FP8_KEEP, *fused)


def use_fp8(
    pipeline: Stage1Pipeline,
    min_weight_elements: int = DEFAULT_MIN_WEIGHT_ELEMENTS,
    granularity: Granularity = "row",
) -> int:
    """Run the diffusion model's (and its CFG replica's) large Linear layers as FP8 (e4m3) matrix products
    (:mod:`synchuman.nn.fp8_linear`; weights quantised now, activations per call). Faster on GPUs with FP8
    tensor cores, and not the same function: outputs differ from the fp16 model (bench/RESULTS.md reports by
    how much). Call after :func:`enable_cfg_parallel` and before :func:`accelerate`.
    :class:`~synchuman.nn.fp8_linear.FP8Unavailable` on a device without FP8 (CPU, GPU before sm_89).
    Returns the number of layers converted per model."""
    _require_eager(pipeline, "use_fp8")
    models = [(pipeline.diffusion, pipeline.device), (pipeline.cfg_diffusion, pipeline.cfg_device)]
    present = [(model, device) for model, device in models if model is not None and device is not None]
    for _, device in present:
        require_fp8(device)
    if pipeline.dtype not in (torch.float16, torch.bfloat16):
        raise FP8Unavailable(f"FP8 layers replace half-precision ones; the model is {pipeline.dtype}")
    counts = [
        convert_linears_to_fp8(model, min_weight_elements, granularity, fp8_keep(model))
        for model, _ in present
    ]
    log.info("FP8 linear layers", extra={"converted": counts[0], "granularity": granularity})
    return counts[0]


def accelerate(
    pipeline: Stage1Pipeline,
    compile_model: bool = True,
    cuda_graphs: bool = False,
    package_dir: Path | None = None,
) -> str:
    """Compile the diffusion model (and its CFG replica): same function, ~30 % faster loop on a GPU; the
    first call compiles (minutes). SDPA already picks cuDNN's fused attention on Hopper.

    ``package_dir``: compile ahead of time (:class:`~synchuman.pipelines.compiled_model.AotCompiledModel`:
    torch.export + AOTInductor) into a package in this directory, or load the package a previous process
    saved there, so that a restart traces and compiles nothing. Only for one device without CUDA graphs;
    otherwise (and without ``package_dir``) ``torch.compile``.

    ``cuda_graphs``: compile in ``"reduce-overhead"`` mode, replaying each forward as one CUDA graph. This
    takes the host's kernel launches out of the loop, which matters with :func:`enable_cfg_parallel`: one
    host thread launches both devices' forwards, and without graphs the launches, not the GPUs, set the pace
    (bench/RESULTS.md).

    Returns how the model runs: ``"eager"``, ``"aot"`` or ``"torch.compile"``."""
    if not compile_model:
        return "eager"
    if package_dir is not None and not cuda_graphs and pipeline.cfg_diffusion is None:
        if pipeline.weights_identity is None:
            raise ValueError("an ahead-of-time package needs the weights' identity (from_pretrained)")
        pipeline.diffusion = AotCompiledModel(  # type: ignore[assignment]
            pipeline.diffusion, package_dir, "stage1-diffusion", pipeline.weights_identity
        )
        return "aot"
    mode = "reduce-overhead" if cuda_graphs else "default"
    pipeline.diffusion = torch.compile(pipeline.diffusion, mode=mode)
    if pipeline.cfg_diffusion is not None:
        pipeline.cfg_diffusion = torch.compile(pipeline.cfg_diffusion, mode=mode)
    return "torch.compile"


def parallel_velocity(
    pipeline: Stage1Pipeline,
    class_labels: torch.Tensor,
    image_latents: torch.Tensor,
    trellis_cond: torch.Tensor,
) -> Velocity:
    """The sampler's ``velocity(latents, structure, timestep)`` with :func:`enable_cfg_parallel`: the
    unconditional batch ``[normal-u, colour-u]`` (10) runs on the replica's device, the conditional one on the
    main device; the replica's forward is launched first.

    Args:
        class_labels / image_latents: ``[20, ...]`` in the joint CFG layout ``[normal-u, normal-c, colour-u,
            colour-c] x 5 views``; trellis_cond: ``[2, L, D]`` ``[zero, DINOv2 tokens]``.
    Returns:
        ``((uncond_2d, cond_2d), (uncond_3d, cond_3d))``, fp32 on the main device, each 2D half ``[10, 4, h,
        w]`` (normal x 5, colour x 5), each 3D half ``[1, 8, G, G, G]``.
    """
    views = NUM_VIEWS
    uncond_rows = [*range(0, views), *range(2 * views, 3 * views)]
    cond_rows = [*range(views, 2 * views), *range(3 * views, 4 * views)]
    halves = [
        (
            model,
            device,
            pipeline.prompt_embeds_cfg[rows].to(device),
            class_labels[rows].to(device),
            image_latents[rows].to(device),
            trellis_cond[trellis_row : trellis_row + 1].to(device),
        )
        for rows, model, device, trellis_row in (
            (uncond_rows, pipeline.cfg_diffusion, pipeline.cfg_device, 0),
            (cond_rows, pipeline.diffusion, pipeline.device, 1),
        )
    ]
    dtype, main = pipeline.dtype, pipeline.device

    def velocity(latents: torch.Tensor, structure: torch.Tensor, t: float) -> tuple[Pair, Pair]:
        out = []
        for model, device, prompts, labels, image_lat, t_cond in halves:
            sample = torch.cat([latents.to(device, dtype, non_blocking=True), image_lat], dim=1)
            timestep = torch.full((1,), t, device=device)
            trellis_x = structure.to(device, dtype, non_blocking=True)
            out.append(model(sample, timestep, prompts, labels, trellis_x, timestep, t_cond))
        (u2, u3), (c2, c3) = out
        uncond_2d, uncond_3d = (x.to(main, non_blocking=True).float() for x in (u2, u3))
        return (uncond_2d, c2.float()), (uncond_3d, c3.float())

    return velocity

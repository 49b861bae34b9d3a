"""Texture baking: fit a UV texture to observed views of the mesh.

Texture convention: ``[T, T, 3]`` float in final image orientation (row 0 is ``v = 1``), sampled bilinearly at
texel centres (``grid_sample``, ``align_corners=False``) with ``x = 2u - 1``, ``y = 1 - 2v``.

Modes:
- ``"opt"`` (upstream): texture from zeros, ``steps`` Adam steps (betas 0.5/0.9, cosine lr 1e-2 -> 3e-5),
  each on one random view: L1 over the view's observed pixels + ``lambda_tv`` * total variation; the last
  7 % of steps draw only from ``late_views`` (upstream: the front and back generated views).
- ``"fast"``: texture initialised by bilinear splatting (weighted average of every observation) with
  push-pull filling, then ``steps`` full-batch Adam steps of the same objective (every view each step, equal
  view weights).
Texels outside every UV chart are filled by push-pull from the charts (upstream: OpenCV Telea inpainting).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from synchuman.geometry.raster import interpolate, rasterize
from synchuman.postprocess.defaults import BAKE_STEPS


@dataclass
class BakeView:
    """One observation.

    Attributes:
        image: ``[H, W, 3]`` float32 in [0, 1]; mask: ``[H, W]`` bool (pixels to trust).
        extrinsics: ``[4, 4]`` world-to-camera; intrinsics ``[3, 3]`` normalised; orthographic: projection
        kind.
    """

    image: torch.Tensor
    mask: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    orthographic: bool


@dataclass
class Samples:
    """Observed pixels that hit the mesh, all views concatenated.

    Attributes:
        uv: ``[P, 2]``; color: ``[P, 3]``; offsets: ``num_views + 1`` Python ints (view ``i`` owns
        ``offsets[i]:offsets[i+1]``).
    """

    uv: torch.Tensor
    color: torch.Tensor
    offsets: list[int]

    @property
    def num_views(self) -> int:
        return len(self.offsets) - 1


@dataclass
class BakeStats:
    """Bake quality: ``l1`` mean over views of each view's mean absolute error (0..1 units), ``coverage``
    share
    of UV-chart texels reached by at least one observation, ``mode`` and ``steps`` run."""

    l1: float
    coverage: float
    mode: str
    steps: int


def gather_samples(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    uvs: torch.Tensor,
    views: list[BakeView],
    max_candidates: int = 1 << 24,
    backend: str = "torch",
    after_batch: Callable[[], None] | None = None,
) -> Samples:
    """Rasterise every view (batched per image size: 16M pixels a batch on CUDA, 0.5M, about one view, on a
    CPU) and keep masked pixels with their UV and colour. ``backend``: the rasteriser
    (:func:`~synchuman.geometry.raster.rasterize`); ``after_batch()`` runs after every batch."""
    device = vertices.device
    uv_list, color_list, counts = [], [], []
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, view in enumerate(views):
        by_size.setdefault(tuple(view.image.shape[:2]), []).append(i)
    per_view: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for (height, width), ids in by_size.items():
        batch = max(1, (1 << (24 if device.type == "cuda" else 19)) // (height * width))
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            extr = torch.stack([views[i].extrinsics for i in chunk]).to(device).float()
            intr = torch.stack([views[i].intrinsics for i in chunk]).to(device).float()
            ortho = torch.tensor([views[i].orthographic for i in chunk], device=device)
            size = (height, width)
            out = rasterize(
                vertices, faces, extr, intr, *size, ortho, max_candidates=max_candidates, backend=backend
            )
            uv_img = interpolate(uvs, faces, out)
            for j, i in enumerate(chunk):
                hit = out.mask[j] & views[i].mask.to(device)
                per_view[i] = (uv_img[j][hit], views[i].image.to(device).float()[hit])
            if after_batch is not None:
                after_batch()
    for i in range(len(views)):
        uv_list.append(per_view[i][0])
        color_list.append(per_view[i][1])
        counts.append(per_view[i][0].shape[0])
    offsets = [0, *np.cumsum(counts).tolist()]
    return Samples(torch.cat(uv_list), torch.cat(color_list), [int(o) for o in offsets])


def uv_coverage(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, T]`` bool: texels whose centre lies inside a UV triangle."""
    flat = torch.cat([uvs[:, :1], 1 - uvs[:, 1:2], torch.ones_like(uvs[:, :1])], dim=1)
    eye = torch.eye(4, device=uvs.device)[None]
    out = rasterize(
        flat, faces, eye, torch.eye(3, device=uvs.device)[None], size, size, True, near=0.0, with_bary=False
    )
    return out.mask[0]


def _texel_coords(uv: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5


def splat(samples: Samples, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear splat of every sample: ``(weighted colour sum [T, T, 3], weight [T, T])``."""
    device = samples.uv.device
    tx, ty = _texel_coords(samples.uv, size)
    x0, y0 = tx.floor(), ty.floor()
    total = torch.zeros(size * size, 3, device=device)
    weight = torch.zeros(size * size, device=device)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - (tx - xi).abs()) * (1 - (ty - yi).abs())
            ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
            idx = (yi.clamp(0, size - 1) * size + xi.clamp(0, size - 1)).long()
            w = torch.where(ok, w, 0.0)
            total.index_add_(0, idx, samples.color * w[:, None])
            weight.index_add_(0, idx, w)
    return total.reshape(size, size, 3), weight.reshape(size, size)


def push_pull(texture: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill texels where ``known [T, T]`` is False from a pyramid of averages of the known ones.

    ``texture`` is ``[T, T, C]``; returns a new tensor, known texels unchanged.
    """
    size = texture.shape[0]
    padded = 1 << max(0, math.ceil(math.log2(size)))
    value = functional.pad(
        texture.permute(2, 0, 1)[None] * known[None, None], (0, padded - size, 0, padded - size)
    )
    weight = functional.pad(known[None, None].float(), (0, padded - size, 0, padded - size))
    levels = [(value, weight)]
    while levels[-1][0].shape[-1] > 1:
        v, w = levels[-1]
        levels.append((functional.avg_pool2d(v, 2), functional.avg_pool2d(w, 2)))
    filled = levels[-1][0] / levels[-1][1].clamp(min=1e-12)
    for v, w in reversed(levels[:-1]):
        up = functional.interpolate(filled, scale_factor=2, mode="nearest")
        mean = v / w.clamp(min=1e-12)
        filled = torch.where(w > 0, mean, up)
    out = filled[0, :, :size, :size].permute(1, 2, 0)
    return torch.where(known[..., None], texture, out)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture [T, T, 3]`` (or ``[1, 3, T, T]``) at ``uv [P, 2]``; returns ``[P, 3]``."""
    tex = texture if texture.ndim == 4 else texture.permute(2, 0, 1)[None]
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None]
    sampled = functional.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, :, 0].T


def total_variation(tex: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertical plus horizontal neighbours of ``tex [1, C, T, T]``."""
    return (tex[:, :, 1:] - tex[:, :, :-1]).abs().mean() + (tex[:, :, :, 1:] - tex[:, :, :, :-1]).abs().mean()


def view_l1(texture: torch.Tensor, samples: Samples) -> float:
    """Mean over views (with samples) of each view's mean absolute error of the textured mesh."""
    err = (sample_texture(texture, samples.uv) - samples.color).abs().mean(dim=1)
    sums = torch.zeros(samples.num_views, device=err.device)
    view = torch.repeat_interleave(
        torch.arange(samples.num_views, device=err.device),
        torch.tensor(np.diff(samples.offsets), device=err.device),
    )
    sums.index_add_(0, view, err)
    counts = torch.tensor(np.diff(samples.offsets), device=err.device, dtype=torch.float32)
    used = counts > 0
    return float((sums[used] / counts[used]).mean()) if bool(used.any()) else float("nan")


def _cosine(step: int, total: int, start: float, end: float) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total))


def bake_texture(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    uvs: torch.Tensor,
    views: list[BakeView],
    texture_size: int = 1024,
    mode: str = "opt",
    steps: int = 1000,
    lambda_tv: float = 0.01,
    lr: tuple[float, float] = (1e-2, 3e-5),
    late_views: tuple[int, ...] = (0, 2),
    late_fraction: float = 0.07,
    seed: int = 0,
    raster_backend: str = "torch",
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, BakeStats]:
    """Bake a texture ``[T, T, 3]`` float32 in [0, 1] (device of ``vertices``) and its :class:`BakeStats`.

    Args:
        vertices ``[V, 3]``, faces ``[F, 3]``, uvs ``[V, 2]`` of the parametrised mesh (same device).
        views: observations; ``late_views`` index into it (ignored when they have no samples).
        on_step: ``on_step(step, steps)`` after every optimisation step, and ``on_step(0, steps)`` after
            every batch of rasterised views and the texture initialisation (before the first step).
    """
    if mode not in BAKE_STEPS:
        raise ValueError(f"bake_texture: mode must be 'opt' or 'fast', got {mode!r}")
    step = on_step or (lambda done, total: None)
    samples = gather_samples(
        vertices, faces, uvs, views, backend=raster_backend, after_batch=lambda: step(0, steps)
    )
    if samples.uv.shape[0] == 0:
        raise ValueError("bake_texture: no view sees the mesh inside its mask; check cameras and masks")
    covered = uv_coverage(uvs, faces, texture_size)
    total, weight = splat(samples, texture_size)
    reached = weight > 0
    coverage = float((reached & covered).sum()) / max(1, int(covered.sum()))
    step(0, steps)
    if mode == "fast":
        init = push_pull(total / weight.clamp(min=1e-12)[..., None], reached)
        step(0, steps)
    else:
        init = torch.zeros(texture_size, texture_size, 3, device=vertices.device)
    tex = torch.nn.Parameter(init.permute(2, 0, 1)[None].contiguous())
    optimizer = torch.optim.Adam([tex], betas=(0.5, 0.9), lr=lr[0], fused=tex.is_cuda or None)
    grid = torch.stack([samples.uv[:, 0] * 2 - 1, 1 - samples.uv[:, 1] * 2], dim=-1)[None, None]
    nonempty = [i for i in range(samples.num_views) if samples.offsets[i + 1] > samples.offsets[i]]
    if mode == "opt":
        order = _view_schedule(nonempty, late_views, steps, late_fraction, seed)
    else:
        counts = torch.tensor(np.diff(samples.offsets), device=grid.device, dtype=torch.float32)
        per_sample = torch.repeat_interleave(1.0 / (counts.clamp(min=1) * len(nonempty)), counts.long())
    for index in range(steps):
        optimizer.zero_grad(set_to_none=True)
        if mode == "opt":
            a, b = samples.offsets[order[index]], samples.offsets[order[index] + 1]
            pred = functional.grid_sample(
                tex, grid[:, :, a:b], mode="bilinear", padding_mode="border", align_corners=False
            )
            loss = (pred[0, :, 0].T - samples.color[a:b]).abs().mean()
        else:
            pred = functional.grid_sample(
                tex, grid, mode="bilinear", padding_mode="border", align_corners=False
            )
            loss = ((pred[0, :, 0].T - samples.color).abs().mean(dim=1) * per_sample).sum()
        if lambda_tv > 0:
            loss = loss + lambda_tv * total_variation(tex)
        loss.backward()
        optimizer.step()
        optimizer.param_groups[0]["lr"] = _cosine(index, steps, lr[0], lr[1])
        step(index + 1, steps)
    texture = tex.detach()[0].permute(1, 2, 0).clamp(0, 1)
    texture = push_pull(texture, covered)
    return texture, BakeStats(view_l1(texture, samples), coverage, mode, steps)


def _view_schedule(
    views: list[int], late_views: tuple[int, ...], steps: int, late_fraction: float, seed: int
) -> list[int]:
    """Random view per step (upstream): any view, then only ``late_views`` for the last ``late_fraction``."""
    gen = torch.Generator().manual_seed(seed)
    late = [v for v in late_views if v in views] or views
    early_steps = steps - int(round(steps * late_fraction))
    early = torch.tensor(views)[torch.randint(len(views), (early_steps,), generator=gen)]
    tail = torch.tensor(late)[torch.randint(len(late), (steps - early_steps,), generator=gen)]
    return torch.cat([early, tail]).tolist()


def to_uint8(texture: torch.Tensor) -> np.ndarray:
    """``[T, T, 3]`` float in [0, 1] -> uint8 numpy (one host transfer)."""
    return (texture.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()

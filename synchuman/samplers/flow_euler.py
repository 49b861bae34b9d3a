"""Euler sampler for rectified-flow models with classifier-free guidance on a ``t`` interval.

Schedule: ``s = linspace(1, 0, steps + 1)``, ``t = r s / (1 + (r - 1) s)`` (``r = rescale_t``). Each step
calls the model at ``1000 t``; inside ``cfg_interval`` (inclusive) the velocity is
``(1 + w) model(x, t, cond) - w model(x, t, neg_cond)``. Update ``x <- x - (t - t_prev) v``; the x0
estimate is ``(1 - sigma_min) x - (sigma_min + (1 - sigma_min) t) v``.

With guidance, the positive and negative branches run as ONE batch of ``2B`` items on the same voxels (their
coordinate caches are built once and reused by every step), so a step launches one forward pass and makes no
host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from synchuman.sparse import SparseTensor


class SamplingCancelled(Exception):
    """Raised when ``should_stop()`` returned true between two steps."""


@dataclass
class SampleResult:
    """``samples``: final latent (same coords as the noise); per-step ``pred_x_prev`` / ``pred_x_0`` feats
    (``[N, C]`` each, only when ``keep_trajectory``)."""

    samples: SparseTensor
    pred_x_prev: list[torch.Tensor] = field(default_factory=list)
    pred_x_0: list[torch.Tensor] = field(default_factory=list)


def timesteps(steps: int, rescale_t: float = 1.0) -> np.ndarray:
    """The ``steps + 1`` float64 times from 1 to 0 after the ``rescale_t`` warp."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    s = np.linspace(1.0, 0.0, steps + 1)
    return rescale_t * s / (1 + (rescale_t - 1) * s)


def _doubled(x: SparseTensor) -> SparseTensor:
    """Items ``0..B-1`` followed by a copy as items ``B..2B-1`` (same voxels)."""
    copy = x.coords.clone()
    copy[:, 0] += x.batch_size
    return SparseTensor(torch.cat([x.feats, x.feats]), torch.cat([x.coords, copy]))


def _batched_cond(cond: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if cond.dim() != 3:
        raise ValueError(f"{name} must be [B, L, C]; got {tuple(cond.shape)}")
    if cond.shape[0] == 1 and batch > 1:
        return cond.expand(batch, -1, -1)
    if cond.shape[0] != batch:
        raise ValueError(f"{name} batch {cond.shape[0]} does not match the latent batch {batch}")
    return cond


@dataclass
class FlowEulerGuidanceIntervalSampler:
    """Euler flow sampler with CFG restricted to ``cfg_interval`` (upstream ``sigma_min`` default 1e-5)."""

    sigma_min: float = 1e-5

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        noise: SparseTensor,
        cond: torch.Tensor,
        neg_cond: torch.Tensor,
        steps: int = 25,
        rescale_t: float = 3.0,
        cfg_strength: float = 5.0,
        cfg_interval: Sequence[float] = (0.5, 1.0),
        callback: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        keep_trajectory: bool = False,
        cuda_graph: bool = False,
    ) -> SampleResult:
        """Integrate from ``noise`` (t = 1) to t = 0.

        Args:
            model: velocity model ``model(x: SparseTensor, t: [B] (x1000), cond: [B, L, C]) -> SparseTensor``.
            noise: ``[N, C]`` initial latent on the target voxels, ``B`` items.
            cond / neg_cond: ``[B or 1, L, C]`` positive / negative context.
            steps, rescale_t, cfg_strength, cfg_interval: schedule and guidance (see module docstring).
            callback: ``callback(step, total)`` after each finished step (1-based).
            should_stop: checked before each step; ``True`` raises :class:`SamplingCancelled`.
            keep_trajectory: also return every step's ``pred_x_prev`` / ``pred_x_0``.
            cuda_graph: on CUDA, replay a captured graph of the model forward from its second call on
                (per guided/unguided batch), removing the per-step launch overhead.
        """
        batch = noise.batch_size
        cond = _batched_cond(cond, batch, "cond")
        neg_cond = _batched_cond(neg_cond, batch, "neg_cond")
        lo, hi = cfg_interval
        t_seq = timesteps(steps, rescale_t)
        use_cfg = [bool(lo <= t <= hi) and cfg_strength != 0 for t in t_seq[:-1]]
        pair = _doubled(noise) if any(use_cfg) else None
        pair_cond = torch.cat([cond, neg_cond]) if pair is not None else None
        velocity = _GraphedForward(model) if cuda_graph and noise.feats.is_cuda else model
        x = noise.feats
        result = SampleResult(noise)
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise SamplingCancelled(f"sampling stopped before step {i + 1} of {steps}")
            t, t_prev = float(t_seq[i]), float(t_seq[i + 1])
            if pair is not None and pair_cond is not None and use_cfg[i]:
                t_in = torch.full((2 * batch,), 1000 * t, device=x.device, dtype=torch.float32)
                both = velocity(pair.replace(torch.cat([x, x])), t_in, pair_cond).feats
                pos, neg = both[: x.shape[0]], both[x.shape[0] :]
                v = (1 + cfg_strength) * pos - cfg_strength * neg
            else:
                t_in = torch.full((batch,), 1000 * t, device=x.device, dtype=torch.float32)
                v = velocity(noise.replace(x), t_in, cond).feats
            x_0 = (1 - self.sigma_min) * x - (self.sigma_min + (1 - self.sigma_min) * t) * v
            x = x - (t - t_prev) * v
            if keep_trajectory:
                result.pred_x_prev.append(x)
                result.pred_x_0.append(x_0)
            if callback is not None:
                callback(i + 1, steps)
        result.samples = noise.replace(x)
        return result


class _GraphedForward:
    """``model(x, t, cond)`` through CUDA graphs, one per coordinate set (keyed by its cache).

    The first call per coordinate set runs eagerly (building neighbour maps, layouts and other cached
    coordinate data), the second captures the forward with static input buffers, later calls copy the inputs
    in and replay. Requires a forward without host synchronisation once the caches exist.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.seen: set[int] = set()
        self.graphs: dict[
            int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
        ] = {}

    def __call__(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> SparseTensor:
        key = id(x.cache)
        if key not in self.seen:
            self.seen.add(key)
            return self.model(x, t, cond)
        if key not in self.graphs:
            static = (x.feats.clone(), t.clone(), cond.clone())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.model(x.replace(static[0]), static[1], static[2]).feats
            self.graphs[key] = (graph, *static, out)
        graph, feats, t_in, cond_in, out = self.graphs[key]
        feats.copy_(x.feats)
        t_in.copy_(t)
        cond_in.copy_(cond)
        graph.replay()
        return x.replace(out.clone())


@dataclass(frozen=True)
class LatentNormalization:
    """Per-channel statistics of the structured latent (``pipeline.json`` ``slat_normalization``)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, data: dict) -> LatentNormalization:
        """From ``{"mean": [...], "std": [...]}`` (same length, std > 0)."""
        mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError("slat_normalization needs mean and std of equal length with std > 0")
        return cls(mean, std)

    def denormalize(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats * std + mean`` on ``[N, C]``."""
        if feats.shape[-1] != len(self.mean):
            raise ValueError(f"latent has {feats.shape[-1]} channels; normalisation has {len(self.mean)}")
        std = torch.tensor(self.std, dtype=feats.dtype, device=feats.device)
        mean = torch.tensor(self.mean, dtype=feats.dtype, device=feats.device)
        return feats * std + mean

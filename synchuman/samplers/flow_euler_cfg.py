"""Euler sampler for a rectified-flow model that moves several latents together, with classifier-free
guidance on every step (stage 1: the 2D view latents and the 3D structure latent).

Schedule: :func:`~synchuman.samplers.flow_euler.timesteps` (``t = r s / (1 + (r - 1) s)``, ``s =
linspace(1, 0, steps + 1)``, ``r = rescale_t``). Each step asks the model for the unconditional and the
conditional velocity of every latent at ``1000 t``, guides each as ``v = u + w (c - u)`` and updates
``x <- x - (t - t_prev) v``.

How the two halves are computed (one joint batch, or two devices in parallel, compiled or not) is the
caller's :data:`GuidedVelocity`; the sampler only integrates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from synchuman.samplers.flow_euler import SamplingCancelled, timesteps

#: ``velocity(*latents, timestep) -> ((uncond, cond) per latent)``: fp32 velocities shaped like the latents;
#: ``timestep`` is ``1000 t``.
GuidedVelocity = Callable[..., Sequence[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class FlowEulerCfgSampler:
    """Euler flow sampler with classifier-free guidance on every step (upstream stage 1: ``rescale_t`` 3)."""

    rescale_t: float = 3.0

    @torch.no_grad()
    def sample(
        self,
        velocity: GuidedVelocity,
        latents: Sequence[torch.Tensor],
        steps: int = 50,
        cfg_strength: float = 3.0,
        callback: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Integrate ``latents`` from t = 1 (noise) to t = 0.

        Args:
            velocity: the guided model (see :data:`GuidedVelocity`).
            latents: fp32 initial noise, one tensor per latent (stage 1: ``[10, 4, h, w]`` views and
                ``[1, 8, G, G, G]`` structure).
            steps: Euler steps (>= 1); cfg_strength: guidance weight ``w``.
            callback: ``callback(step, total)`` after each finished step (1-based).
            should_stop: checked before each step; ``True`` raises
                :class:`~synchuman.samplers.flow_euler.SamplingCancelled`.
        Returns:
            the final latents (fp32), in the order given.
        """
        t_seq = timesteps(steps, self.rescale_t)
        xs = tuple(latents)
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise SamplingCancelled(f"sampling cancelled before step {i + 1} of {steps}")
            t, t_prev = float(t_seq[i]), float(t_seq[i + 1])
            halves = velocity(*xs, 1000 * t)
            xs = tuple(
                x - (t - t_prev) * (uncond + cfg_strength * (cond - uncond))
                for x, (uncond, cond) in zip(xs, halves, strict=True)
            )
            if callback is not None:
                callback(i + 1, steps)
        return xs

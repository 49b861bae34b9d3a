"""Timestep and absolute 3D position embeddings (TRELLIS conventions and key names)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` (cos first), ``f_i = exp(-ln(max_period) i / half)``.

    Args:
        t: ``[B]`` timesteps (any float scale; the flow models pass ``1000 * t``).
        dim: embedding size (odd sizes get one zero column).
    Returns:
        fp32 ``[B, dim]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return functional.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    """``mlp(timestep_embedding(t))``, ``mlp = Linear(freq, C) -> SiLU -> Linear(C, C)`` (keys mlp.0/2).

    Input ``[B]`` timesteps, output ``[B, C]`` in the dtype of the MLP weights.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AbsolutePositionEmbedder(nn.Module):
    """Fixed sin/cos embedding of integer positions, no parameters (nothing in the state dict).

    For ``C`` channels and ``A`` axes, ``F = C // A // 2`` frequencies ``f_i = 10000^(-i/F)``; each axis
    contributes ``[sin(p f), cos(p f)]`` and the result is zero-padded to ``C``.
    Input ``[N, A]`` positions (ints or floats), output fp32 ``[N, C]``.
    """

    def __init__(self, channels: int, in_channels: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels
        self.freq_dim = channels // in_channels // 2
        if self.freq_dim < 1:
            raise ValueError(f"position embedding needs channels >= {2 * in_channels}; got {channels}")

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if positions.dim() != 2 or positions.shape[1] != self.in_channels:
            raise ValueError(f"positions must be [N, {self.in_channels}]; got {tuple(positions.shape)}")
        i = torch.arange(self.freq_dim, dtype=torch.float32, device=positions.device)
        freqs = 1.0 / (10000.0 ** (i / self.freq_dim))
        args = positions.float()[:, :, None] * freqs  # [N, A, F]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1).reshape(positions.shape[0], -1)
        return functional.pad(emb, (0, self.channels - emb.shape[1]))

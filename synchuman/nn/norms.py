"""Normalisation layers that compute in fp32 whatever the activation dtype.

Parameter names follow upstream TRELLIS: ``LayerNorm32`` has ``weight``/``bias`` (when affine),
``GroupNorm32`` likewise, and :class:`MultiHeadRMSNorm` has ``gamma`` ``[H, D]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def _fp32(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.float()


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last dim, computed in fp32 and cast back to the input dtype. ``[..., C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = functional.layer_norm(
            x.float(), self.normalized_shape, _fp32(self.weight), _fp32(self.bias), self.eps
        )
        return out.to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back. Input ``[B, C, *]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = functional.group_norm(
            x.float(), self.num_groups, _fp32(self.weight), _fp32(self.bias), self.eps
        )
        return out.to(x.dtype)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm for queries/keys: ``normalize(x, dim=-1) * gamma * sqrt(D)`` in fp32.

    Args:
        dim: head dim ``D``; heads: number of heads ``H``. ``gamma`` has shape ``[H, D]``.
    Input ``[..., H, D]``, output the same shape and dtype.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (functional.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale).to(x.dtype)

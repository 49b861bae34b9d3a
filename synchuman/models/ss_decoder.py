"""TRELLIS sparse-structure decoder: dense 3D conv net from the ``8 x 16^3`` latent to occupancy logits.

Structure (``state_dict`` keys as upstream): ``input_layer`` (Conv3d 3^3) -> ``middle_block`` (ResBlock3d x
``num_res_blocks_middle`` at ``channels[0]``) -> ``blocks`` (per stage ``num_res_blocks`` ResBlock3d, then an
:class:`UpsampleBlock3d` to the next stage's width) -> ``out_layer`` (channel LayerNorm, SiLU, Conv3d 3^3).
Each upsampling doubles the grid, so the output is ``[B, out, r * 2^(S-1)]^3`` for ``S = len(channels)``
stages (real: 16^3 -> 64^3 with channels ``[512, 128, 32]``).

ResBlock3d: ``x + conv2(SiLU(LN2(conv1(SiLU(LN1(x))))))`` with a 1x1x1 ``skip_connection`` conv when the width
changes; LN is a LayerNorm over channels at each voxel (affine, eps 1e-5, computed in fp32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional


class ChannelLayerNorm32(nn.LayerNorm):
    """LayerNorm over dim 1 of ``[B, C, *spatial]`` in fp32, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = x.movedim(1, -1).float()
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        h = functional.layer_norm(h, self.normalized_shape, weight, bias, self.eps)
        return h.to(x.dtype).movedim(-1, 1)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, C f^3, H, W, D]`` -> ``[B, C, H f, W f, D f]``; channel ``c f^3 + (a f^2 + b f + d)`` goes to the
    sub-voxel offset ``(a, b, d)``."""
    b, c, h, w, d = x.shape
    out = c // factor**3
    x = x.reshape(b, out, factor, factor, factor, h, w, d)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, out, h * factor, w * factor, d * factor)


class ResBlock3d(nn.Module):
    """Pre-norm residual block on ``[B, C, H, W, D]`` (keys ``norm1/2``, ``conv1/2``, ``skip_connection``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels, eps=1e-5)
        self.norm2 = ChannelLayerNorm32(out_channels, eps=1e-5)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection: nn.Module = (
            nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv1(functional.silu(self.norm1(x)))
        h = self.conv2(functional.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class UpsampleBlock3d(nn.Module):
    """Conv3d 3^3 to ``8 out`` channels, then :func:`pixel_shuffle_3d` (x2).

    ``[B, in, r, r, r]`` -> ``[B, out, 2r, 2r, 2r]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return pixel_shuffle_3d(self.conv(x), 2)


class SparseStructureDecoder(nn.Module):
    """Latent ``[B, latent_channels, r, r, r]`` -> logits ``[B, out_channels, R, R, R]``, ``R = r 2^(S-1)``.

    Args:
        out_channels: logit channels (1: occupancy).
        latent_channels: latent channels (8).
        num_res_blocks: residual blocks per stage.
        channels: width of each stage (the first is the middle block's width).
        num_res_blocks_middle: residual blocks before the first stage.
        norm_type: only ``"layer"`` (the released decoder).
        use_fp16: upstream's storage hint; the dtype is chosen when loading (kept for config compatibility).
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: Sequence[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ) -> None:
        super().__init__()
        if norm_type != "layer":
            raise ValueError(f"only norm_type='layer' is supported (the released decoder); got {norm_type!r}")
        if not channels:
            raise ValueError("channels must name at least one stage width")
        self.use_fp16 = use_fp16
        self.latent_channels = latent_channels
        self.upsample_factor = 2 ** (len(channels) - 1)
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*(ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)))
        blocks: list[nn.Module] = []
        for i, width in enumerate(channels):
            blocks += [ResBlock3d(width) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(width, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(channels[-1], eps=1e-5),
            nn.SiLU(),
            nn.Conv3d(channels[-1], out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, latent_channels, r, r, r]`` (any float dtype) -> logits in the weights' dtype."""
        if x.dim() != 5 or x.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be [B, {self.latent_channels}, r, r, r]; got {tuple(x.shape)}")
        h = self.input_layer(x.to(self.input_layer.weight.dtype))
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h)

"""Submanifold sparse convolution in PyTorch (neighbour maps + gathered matmuls), spconv weight layout.

Upstream stores sparse conv weights as ``[out, kx, ky, kz, in]`` (spconv "KRSC"). A 3x3x3 submanifold conv is
the cross-correlation ``out[p] = b + sum_{i,j,k} W[:, i, j, k, :] @ x[p + (i-1, j-1, k-1)]`` over existing
voxels only; output coordinates equal input coordinates. A 1x1x1 conv multiplies by the raw weight buffer
reinterpreted row-major as ``[in, out]`` (what spconv does), which is *not* ``W[:, 0, 0, 0, :].T``.
"""

from __future__ import annotations

import torch
from torch import nn

from synchuman.sparse.tensor import SparseTensor

# Rows of the gathered [rows, K * C_in] operand per chunk (bounds the temporary to ~2^27 elements).
_GATHER_BUDGET = 1 << 27


def _coord_keys(coords: torch.Tensor, pad: int) -> tuple[torch.Tensor, int]:
    """Encode int ``(b, x, y, z)`` rows as unique int64 keys; spatial coords shifted by ``pad``.

    Returns the keys and the per-axis radix ``D`` (valid spatial coords lie in ``[-pad, D - pad)``).
    """
    c = coords.long()
    radix = int(c[:, 1:].max()) + 2 * pad + 1
    if int(c[:, 1:].min()) < 0:
        raise ValueError("sparse coords must be non-negative")
    keys = ((c[:, 0] * radix + c[:, 1] + pad) * radix + c[:, 2] + pad) * radix + c[:, 3] + pad
    return keys, radix


def build_neighbour_map(coords: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Neighbour indices for a submanifold conv.

    Args:
        coords: int ``[N, 4]`` unique ``(b, x, y, z)``.
        kernel_size: odd kernel size ``K``.
    Returns:
        long ``[N, K^3]``: row of the voxel at ``p + (i - r, j - r, k - r)`` for offset index
        ``(i * K + j) * K + k`` (``r = K // 2``), or ``N`` where that voxel does not exist.
    """
    r = kernel_size // 2
    keys, radix = _coord_keys(coords, r)
    sorted_keys, order = torch.sort(keys)
    rng = torch.arange(-r, r + 1, device=coords.device)
    di, dj, dk = torch.meshgrid(rng, rng, rng, indexing="ij")
    delta = (di.reshape(-1) * radix + dj.reshape(-1)) * radix + dk.reshape(-1)  # [K^3]
    query = keys[:, None] + delta[None, :]
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    found = sorted_keys[pos] == query
    return torch.where(found, order[pos], coords.shape[0])


def neighbour_map(x: SparseTensor, kernel_size: int = 3) -> torch.Tensor:
    """Cached :func:`build_neighbour_map` for ``x``'s coordinates."""
    return x.cache.get(("neighbours", kernel_size), lambda: build_neighbour_map(x.coords, kernel_size))


def gathered_conv(
    feats: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``out[n] = bias + sum_k W_k @ feats[neighbours[n, k]]`` with missing neighbours (index N) as zeros.

    Args:
        feats: ``[N, C_in]``; neighbours: long ``[N, K]``; weight: ``[K * C_in, C_out]``; bias: ``[C_out]``.
    Returns:
        ``[N, C_out]``.
    """
    n, c_in = feats.shape
    padded = torch.cat([feats, feats.new_zeros(1, c_in)], dim=0)
    k = neighbours.shape[1]
    rows = max(1, _GATHER_BUDGET // max(1, k * c_in))
    outs = []
    for start in range(0, n, rows):
        gathered = padded[neighbours[start : start + rows]].reshape(-1, k * c_in)
        outs.append(gathered @ weight if bias is None else torch.addmm(bias, gathered, weight))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


class SubMConv3d(nn.Module):
    """Submanifold 3D convolution (upstream key ``weight`` ``[out, K, K, K, in]``, ``bias`` ``[out]``).

    ``kernel_size`` 1 uses spconv's ``[in, out]`` reinterpretation of the weight buffer; odd ``K > 1`` the
    neighbour-map cross-correlation. Input/output: :class:`SparseTensor` with the same coordinates.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"submanifold conv needs an odd kernel size; got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        k = kernel_size
        fan_in = k**3 * in_channels
        self.weight = nn.Parameter(torch.randn(out_channels, k, k, k, in_channels) * fan_in**-0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: SparseTensor) -> SparseTensor:  # noqa: D102
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(f"conv expects {self.in_channels} channels; got {x.feats.shape[1]}")
        if self.kernel_size == 1:
            w = self.weight.reshape(self.in_channels, self.out_channels)
            out = x.feats @ w if self.bias is None else torch.addmm(self.bias, x.feats, w)
            return x.replace(out)
        w = self.weight.permute(1, 2, 3, 4, 0).reshape(-1, self.out_channels)
        return x.replace(gathered_conv(x.feats, neighbour_map(x, self.kernel_size), w, self.bias))


class SparseConv3d(nn.Module):
    """Upstream ``SparseConv3d`` wrapper (key prefix ``conv.``) around :class:`SubMConv3d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = SubMConv3d(in_channels, out_channels, kernel_size)

    def forward(self, x: SparseTensor) -> SparseTensor:  # noqa: D102
        return self.conv(x)

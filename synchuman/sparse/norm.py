"""Normalisation of sparse features: per-voxel LayerNorm and per-batch-item GroupNorm (fp32 compute)."""

from __future__ import annotations

import torch
from torch import nn

from synchuman.sparse.tensor import SparseTensor


class SparseGroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics run over all voxels of one batch item (and the group's channels).

    Same parameters as ``nn.GroupNorm`` (``weight``/``bias`` ``[C]``); computed in fp32, cast back.
    """

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]  # noqa: D102
        feats = x.feats.float()
        n, c = feats.shape
        g = self.num_groups
        layout = x.layout
        grouped = feats.reshape(n, g, c // g)
        b = len(layout.seqlens)
        count = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).float()[:, None] * (c // g)  # [B, 1]
        mean = feats.new_zeros(b, g).index_add_(0, layout.seq_index, grouped.sum(-1)) / count  # [B, G]
        centred = grouped - layout.broadcast(mean)[:, :, None]
        var = feats.new_zeros(b, g).index_add_(0, layout.seq_index, centred.square().sum(-1)) / count
        out = centred * torch.rsqrt(layout.broadcast(var) + self.eps)[:, :, None]
        out = out.reshape(n, c)
        if self.affine:
            out = out * self.weight.float() + self.bias.float()
        return x.replace(out.to(x.dtype))

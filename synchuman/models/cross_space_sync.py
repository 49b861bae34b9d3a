"""Dual cross-attention "sync" blocks exchanging information between the 2D views and the 3D structure.

Notation: the 2D feature map ``MV`` is ``[N, C, h, h]`` with ``N = 2 B V`` (normal half first, each ``B``
groups of ``V`` views: 4 body views then the face), the 3D tokens ``S`` are ``[B, G^3, Cs]`` with token
``(i G + j) G + k`` at voxel ``(x=i, y=j, z=k)`` of the ``G^3`` grid; 2D group ``b`` pairs with 3D item ``b``.

- :class:`DualCrossAttentionSS` (2D -> 3D, updates ``S``): the normal views' map is linearly projected, then
  GroupNorm -> 3x3 conv -> GELU -> adaptive average pooling to ``G x G``. Voxel ``(x, y, z)`` attends to 4
  pixels: ``view0[G-1-z, x], view2[G-1-z, x], view1[G-1-z, y], view3[G-1-z, y]`` (row, col).
- :class:`DualCrossAttentionMV` (3D -> 2D, updates ``MV``): the structure is projected, GroupNorm -> 3x3x3
  conv -> GELU -> adaptive average pooling to ``h^3``. Pixel ``(row y, col x)`` of body views 0 and 2 attends
  to the voxel ray ``s[x, 0..h-1, h-1-y]``, of views 1 and 3 to ``s[0..h-1, x, h-1-y]``; each domain has its
  own attention / feed-forward / output layer; the face view gets a zero update.

Both blocks are pre-norm residual (attention, then GEGLU feed-forward) around a linear input and output layer,
with the block's input added at the end. Keys (including upstream's ``stucture`` spelling) match upstream.
Keys and values are projected on the (few) distinct pixels / voxels before they are gathered per query, which
computes the same function as projecting every gathered copy.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from torch import nn
from torch.nn import functional

from synchuman.models.mv_unet import Attention


def _few_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of single queries over a handful of keys each.

    ``q`` ``[..., H, D]``, ``k``/``v`` ``[..., K, H, D]`` -> ``[..., H, D]`` (softmax in fp32).
    """
    scores = torch.einsum("...hd,...khd->...hk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    return torch.einsum("...hk,...khd->...hd", scores.softmax(dim=-1), v.float()).to(q.dtype)


class _ConvDown(nn.Module):
    """``conv`` = [GroupNorm(32), Conv 3^d] then GELU (exact) and adaptive average pooling."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.conv = nn.Sequential(nn.GroupNorm(32, channels), conv(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:  # noqa: D102
        h = functional.gelu(self.conv(x))
        pool = functional.adaptive_avg_pool2d if self.dims == 2 else functional.adaptive_avg_pool3d
        return pool(h, size)


class DualCrossAttentionSS(nn.Module):
    """2D -> 3D sync block. Args: mv_dim (2D width), structure_dim (``Cs``), heads, dim_head, num_views."""

    def __init__(self, mv_dim: int, structure_dim: int, heads: int, dim_head: int, num_views: int) -> None:
        super().__init__()
        self.num_views = num_views
        self.normStructure1 = nn.LayerNorm(structure_dim, eps=1e-6)
        self.normStructure2 = nn.LayerNorm(structure_dim, eps=1e-6)
        self.imagedownsample = _ConvDown(mv_dim, dims=2)
        self.input_layer_mv = nn.Linear(mv_dim, mv_dim)
        self.input_layer_stucture = nn.Linear(structure_dim, structure_dim)
        self.output_layer_stucture = nn.Linear(structure_dim, structure_dim)
        self.ffn_stucture = FeedForward(structure_dim, activation_fn="geglu")
        self.cross_attn_MV_to_Structure = Attention(structure_dim, heads, dim_head, context_dim=mv_dim)

    def forward(self, mv: torch.Tensor, structure: torch.Tensor, grid: int) -> torch.Tensor:
        """``mv`` ``[2 B V, C, h, h]``, ``structure`` ``[B, grid^3, Cs]`` -> the updated structure."""
        b = structure.shape[0]
        m = self.input_layer_mv(mv.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        m = self.imagedownsample(m, grid)  # [2BV, C, G, G]
        normal = m[: b * self.num_views].unflatten(0, (b, self.num_views))
        attn = self.cross_attn_MV_to_Structure
        k, v = attn.kv(normal.permute(0, 1, 3, 4, 2))  # [B, V, row, col, H, D]
        k, v = (t[:, :4].flip(2) for t in (k, v))  # row G-1-z -> index z

        def per_voxel(t: torch.Tensor) -> torch.Tensor:  # -> [B, x, y, z, 4, H, D]
            along_x = t[:, [0, 2]].permute(0, 3, 2, 1, 4, 5)  # [B, x(col), z, 2, H, D]
            along_y = t[:, [1, 3]].permute(0, 3, 2, 1, 4, 5)  # [B, y(col), z, 2, H, D]
            shape = (b, grid, grid, grid, 2, *t.shape[-2:])
            return torch.cat([along_x[:, :, None].expand(shape), along_y[:, None].expand(shape)], dim=4)

        s = self.input_layer_stucture(structure)
        q = attn.split(attn.to_q(self.normStructure1(s))).reshape(b, grid, grid, grid, attn.heads, -1)
        h = _few_key_attention(q, per_voxel(k), per_voxel(v)).reshape(b, grid**3, attn.heads, -1)
        s = s + attn.out(h)
        s = s + self.ffn_stucture(self.normStructure2(s))
        return self.output_layer_stucture(s) + structure


class DualCrossAttentionMV(nn.Module):
    """3D -> 2D sync block. Args: mv_dim (2D width), structure_dim (``Cs``), heads, dim_head, num_views."""

    def __init__(self, mv_dim: int, structure_dim: int, heads: int, dim_head: int, num_views: int) -> None:
        super().__init__()
        self.num_views = num_views
        self.voxeldownsample = _ConvDown(structure_dim, dims=3)
        self.input_layer_mv = nn.Linear(mv_dim, mv_dim)
        self.input_layer_stucture = nn.Linear(structure_dim, structure_dim)
        self.output_layer_no = nn.Linear(mv_dim, mv_dim)
        self.output_layer_clr = nn.Linear(mv_dim, mv_dim)
        self.ffn_no = FeedForward(mv_dim, activation_fn="geglu")
        self.ffn_clr = FeedForward(mv_dim, activation_fn="geglu")
        self.cross_attn_Structure_to_color = Attention(mv_dim, heads, dim_head, context_dim=structure_dim)
        self.cross_attn_Structure_to_normal = Attention(mv_dim, heads, dim_head, context_dim=structure_dim)

    def _domain(
        self,
        m: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn: Attention,
        ffn: nn.Module,
        out: nn.Linear,
    ) -> torch.Tensor:
        """Body-view tokens ``m`` ``[B, 4, h, h, C]`` and per-pixel rays ``k``/``v`` -> output layer out."""
        q = attn.split(attn.to_q(functional.layer_norm(m, m.shape[-1:], eps=1e-6)))
        m = m + attn.out(_few_key_attention(q, k, v))
        m = m + ffn(functional.layer_norm(m, m.shape[-1:], eps=1e-6))
        return out(m)

    def forward(self, mv: torch.Tensor, structure: torch.Tensor, grid: int) -> torch.Tensor:
        """``mv`` ``[2 B V, C, h, h]``, ``structure`` ``[B, grid^3, Cs]`` -> updated ``mv`` (same shape)."""
        b, views = structure.shape[0], self.num_views
        size = mv.shape[-1]
        m = self.input_layer_mv(mv.permute(0, 2, 3, 1))  # [2BV, h, h, C]
        s = self.input_layer_stucture(structure).transpose(1, 2).reshape(b, -1, grid, grid, grid)
        s = self.voxeldownsample(s, size).permute(0, 2, 3, 4, 1)  # [B, x, y, z, Cs], z -> ray index below
        updates = []
        for half, attn, ffn, out in (
            (m[: b * views], self.cross_attn_Structure_to_normal, self.ffn_no, self.output_layer_no),
            (m[b * views :], self.cross_attn_Structure_to_color, self.ffn_clr, self.output_layer_clr),
        ):
            k, v = (t.flip(3) for t in attn.kv(s))  # index 3: h-1-y -> y
            rays = []
            for t in (k, v):
                along_y = t.permute(0, 3, 1, 2, 4, 5)  # [B, y(row), x, k, H, D]: s[x, k, h-1-y]
                along_x = t.permute(0, 3, 2, 1, 4, 5)  # [B, y(row), x, k, H, D]: s[k, x, h-1-y]
                rays.append(torch.stack([along_y, along_x, along_y, along_x], dim=1))
            body = half.unflatten(0, (b, views))[:, :4]
            update = self._domain(body, rays[0], rays[1], attn, ffn, out)
            face = torch.zeros_like(update[:, :1])
            updates.append(torch.cat([update, face], dim=1).flatten(0, 1))
        return torch.cat(updates).permute(0, 3, 1, 2) + mv

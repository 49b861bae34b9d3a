"""Multiview UNet pieces of the SyncHuman 2D branch (SD-2.1-unclip UNet with multiview attention).

The 2D batch holds ``N = 2 G V`` images: two domains (normal first, colour second), each ``G`` groups (the
CFG branches) of ``V`` views (4 body views, then the face view last). Attention inside a block:

- ``attn1`` cross-domain joint self-attention: normal image ``i`` and colour image ``i`` form one sequence of
  ``2 h w`` tokens. The output's face view is resized to ``(h//3, h//3)`` (bilinear) and averaged into view
  0 at rows ``[0, h//3)``, cols ``[h//3, h - h//3)`` (per image group, both domains);
- ``attn_mv`` row-wise multiview attention over the body views only: row ``r`` of the 4 body views of a group
  is one sequence of ``4 w`` tokens; the face view passes unchanged;
- ``attn2`` cross-attention to the prompt embeddings; ``ff`` GEGLU feed-forward.

Key names follow the upstream diffusers module tree (``attentions.i.transformer_blocks.0.attn1.to_q`` ...);
ResNet blocks, down/upsamplers and the GEGLU feed-forward are diffusers' own classes.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn
from torch.nn import functional

from synchuman.nn.attention import attention


class Attention(nn.Module):
    """Multi-head attention projections with diffusers key names: ``to_q``/``to_k``/``to_v`` (no bias),
    ``to_out.0`` (bias). Heads split channels contiguously.

    Args:
        query_dim: query width; heads, dim_head: ``inner = heads * dim_head``; context_dim: key/value
            input width (default ``query_dim``); out_dim: output width (default ``query_dim``).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, out_dim or query_dim)])

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., inner]`` -> ``[..., heads, dim_head]``."""
        return x.unflatten(-1, (self.heads, self.dim_head))

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention projections of ``x`` ``[..., C]`` -> 3 x ``[..., heads, dim_head]`` (one matmul)."""
        weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
        q, k, v = functional.linear(x, weight).chunk(3, dim=-1)
        return self.split(q), self.split(k), self.split(v)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key/value projections of ``context`` ``[..., Cc]`` -> 2 x ``[..., heads, dim_head]``."""
        return self.split(self.to_k(context)), self.split(self.to_v(context))

    def out(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., heads, dim_head]`` -> ``[..., out_dim]``."""
        return self.to_out[0](h.flatten(-2))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Cross-attention: ``x`` ``[B, L, C]`` attends to ``context`` ``[B, Lc, Cc]``."""
        k, v = self.kv(context)
        return self.out(attention(self.split(self.to_q(x)), k, v))


def fuse_face(out: torch.Tensor, num_views: int, height: int) -> torch.Tensor:
    """Average the downsized face view into view 0's face region (see the module docstring).

    ``out``: ``[N, h w, C]`` with ``N`` a multiple of ``num_views`` -> same shape (a new tensor).
    """
    n, _, c = out.shape
    grid = out.reshape(n // num_views, num_views, height, height, c)
    small = height // 3
    face = grid[:, -1].permute(0, 3, 1, 2)
    face = functional.interpolate(face.float(), size=(small, small), mode="bilinear", align_corners=False)
    face = face.to(out.dtype).permute(0, 2, 3, 1)
    region = grid[:, 0, :small, small : height - small]
    fused = grid.clone()
    fused[:, 0, :small, small : height - small] = 0.5 * region + 0.5 * face
    return fused.reshape(n, -1, c)


class MVTransformerBlock(nn.Module):
    """One multiview transformer block on ``[N, h w, C]`` tokens (see the module docstring).

    Args:
        dim: width ``C``; heads: attention heads (``dim_head = C // heads``); cross_attention_dim: prompt
        width; num_views: views per group ``V`` (the last one is the face view).
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, num_views: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        head_dim = dim // heads
        self.num_views = num_views
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm_mv = nn.LayerNorm(dim)
        self.attn_mv = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def cross_domain_attention(self, x: torch.Tensor, height: int) -> torch.Tensor:
        """``attn1`` with face fusion: ``[N, L, C]`` -> ``[N, L, C]`` (normal half first)."""
        n, length, _ = x.shape
        q, k, v = self.attn1.qkv(self.norm1(x))
        joint = [torch.cat(t.chunk(2, dim=0), dim=1) for t in (q, k, v)]  # [N/2, 2L, H, D]
        h = attention(*joint)
        h = torch.cat(h.chunk(2, dim=1), dim=0)  # back to [N, L, H, D]: normal then colour
        return fuse_face(self.attn1.out(h), self.num_views, height)

    def rowwise_attention(self, body: torch.Tensor, height: int) -> torch.Tensor:
        """``attn_mv`` over body views: ``[G (V-1), h w, C]`` -> same shape."""
        views = self.num_views - 1
        groups, width = body.shape[0] // views, body.shape[1] // height

        def rows(t: torch.Tensor) -> torch.Tensor:  # (g v)(h w) H D -> (g h)(v w) H D
            t = t.reshape(groups, views, height, width, *t.shape[-2:]).transpose(1, 2)
            return t.reshape(groups * height, views * width, *t.shape[-2:])

        q, k, v = self.attn_mv.qkv(self.norm_mv(body))
        h = attention(rows(q), rows(k), rows(v))
        h = h.reshape(groups, height, views, width, *h.shape[-2:]).transpose(1, 2)
        return self.attn_mv.out(h.reshape(body.shape[0], height * width, *h.shape[-2:]))

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, height: int) -> torch.Tensor:
        """``x`` ``[N, h w, C]``, ``prompt`` ``[N, Lp, Cp]`` -> ``[N, h w, C]``."""
        x = x + self.cross_domain_attention(x, height)
        grouped = x.unflatten(0, (-1, self.num_views))
        body = grouped[:, :-1].flatten(0, 1)
        body = body + self.rowwise_attention(body, height)
        x = torch.cat([body.unflatten(0, (-1, self.num_views - 1)), grouped[:, -1:]], dim=1).flatten(0, 1)
        x = x + self.attn2(self.norm2(x), prompt)
        return x + self.ff(self.norm3(x))


class TransformerMV2D(nn.Module):
    """GroupNorm(32, eps 1e-6) -> ``proj_in`` (linear) -> one :class:`MVTransformerBlock` -> ``proj_out``
    -> + input. ``[N, C, h, w]`` -> same shape."""

    def __init__(
        self, channels: int, heads: int, cross_attention_dim: int, num_views: int, groups: int
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [MVTransformerBlock(channels, heads, cross_attention_dim, num_views)]
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:  # noqa: D102
        n, c, height, width = x.shape
        if height != width:
            raise ValueError(f"the multiview attention needs square feature maps; got {height}x{width}")
        h = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(n, height * width, c))
        for block in self.transformer_blocks:
            h = block(h, prompt, height)
        return self.proj_out(h).reshape(n, height, width, c).permute(0, 3, 1, 2) + x


def _resnet(in_channels: int, out_channels: int, temb: int, eps: float, groups: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=temb, eps=eps, groups=groups
    )


class DownBlock(nn.Module):
    """``layers`` x (ResNet [+ multiview transformer]) then an optional stride-2 conv.

    ``forward`` returns the output and the skip tensors (each layer's output, then the downsampled one).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb: int,
        layers: int,
        eps: float,
        groups: int,
        downsample: bool,
        attention_heads: int | None,
        cross_attention_dim: int,
        num_views: int,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb, eps, groups)
            for i in range(layers)
        )
        if attention_heads is not None:
            self.attentions = nn.ModuleList(
                TransformerMV2D(out_channels, attention_heads, cross_attention_dim, num_views, groups)
                for _ in range(layers)
            )
        self.has_attention = attention_heads is not None
        if downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")]
            )
        self.has_downsample = downsample

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, prompt: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[N, Cin, h, w]``, ``emb`` ``[N, T]`` -> (``[N, Cout, h', w']``, skips)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.has_attention:
                x = self.attentions[i](x, prompt)
            skips.append(x)
        if self.has_downsample:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """ResNet -> multiview transformer -> ResNet at constant width."""

    def __init__(
        self, channels: int, temb: int, eps: float, groups: int, heads: int, cross_dim: int, num_views: int
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(channels, channels, temb, eps, groups) for _ in range(2))
        self.attentions = nn.ModuleList([TransformerMV2D(channels, heads, cross_dim, num_views, groups)])

    def forward(self, x: torch.Tensor, emb: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.resnets[0](x, emb)
        x = self.attentions[0](x, prompt)
        return self.resnets[1](x, emb)


class UpBlock(nn.Module):
    """``layers`` x (concat skip, ResNet [+ multiview transformer]) then optional nearest x2 + 3x3 conv.

    Args:
        in_channels: width of the deepest skip this block consumes; prev_channels: width of the input.
    """

    def __init__(
        self,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        temb: int,
        layers: int,
        eps: float,
        groups: int,
        upsample: bool,
        attention_heads: int | None,
        cross_attention_dim: int,
        num_views: int,
    ) -> None:
        super().__init__()
        resnets = []
        for i in range(layers):
            skip = in_channels if i == layers - 1 else out_channels
            resnets.append(
                _resnet((prev_channels if i == 0 else out_channels) + skip, out_channels, temb, eps, groups)
            )
        self.resnets = nn.ModuleList(resnets)
        if attention_heads is not None:
            self.attentions = nn.ModuleList(
                TransformerMV2D(out_channels, attention_heads, cross_attention_dim, num_views, groups)
                for _ in range(layers)
            )
        self.has_attention = attention_heads is not None
        if upsample:
            self.upsamplers = nn.ModuleList(
                [Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]
            )
        self.has_upsample = upsample

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, prompt: torch.Tensor
    ) -> torch.Tensor:
        """Consumes ``len(self.resnets)`` skips from the end of ``skips`` (in place)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb)
            if self.has_attention:
                x = self.attentions[i](x, prompt)
        if self.has_upsample:
            x = self.upsamplers[0](x)
        return x

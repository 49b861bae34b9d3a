"""Transformer building blocks with TRELLIS state-dict key names, for dense and packed (sparse) tokens.

Token conventions used by every module here:
- dense: ``x`` ``[B, L, C]`` and ``layout=None``;
- packed: ``x`` ``[N, C]`` (all batch items back to back) and ``layout`` a
  :class:`~synchuman.nn.attention.VarlenLayout` (one sequence per batch item). Self-attention may use a
  different token grouping (``attn_layout``: a ``VarlenLayout`` or a
  :class:`~synchuman.nn.attention.WindowPartition`), e.g. swin windows.

Key names (``state_dict``): ``MultiHeadAttention`` self: ``to_qkv``, ``q_rms_norm.gamma``,
``k_rms_norm.gamma``, ``to_out``; cross: ``to_q``, ``to_kv``, ``to_out``.
``FeedForwardNet``: ``mlp.0``, ``mlp.2``.
``ModulatedTransformerCrossBlock``: ``norm2.{weight,bias}``, ``self_attn.*``, ``cross_attn.*``, ``mlp.mlp.*``,
``adaLN_modulation.1.*`` (``norm1``/``norm3`` have no parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from synchuman.nn.attention import VarlenLayout, WindowPartition, attention
from synchuman.nn.norms import LayerNorm32, MultiHeadRMSNorm

AttnLayout = VarlenLayout | WindowPartition


class FeedForwardNet(nn.Module):
    """``Linear(C, rC) -> GELU(tanh) -> Linear(rC, C)`` on ``[..., C]`` (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.mlp(x)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with optional per-head q/k RMS norm.

    Args:
        channels: model width ``C`` (``H * D``).
        num_heads: ``H``.
        ctx_channels: context width for cross-attention (``None`` = self-attention).
        qk_rms_norm: apply :class:`MultiHeadRMSNorm` to q and k.
        qkv_bias: bias on the input projections.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        qk_rms_norm: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.is_cross = ctx_channels is not None
        if self.is_cross:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(ctx_channels, 2 * channels, bias=qkv_bias)
        else:
            self.to_qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.qk_rms_norm = qk_rms_norm
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def _norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.qk_rms_norm:
            return self.q_rms_norm(q), self.k_rms_norm(k)
        return q, k

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        layout: AttnLayout | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: dense ``[B, L, C]`` (``layout=None``) or packed ``[N, C]``.
            context: cross-attention only: ``[B, Lc, ctx_channels]``.
            layout: packed tokens: self-attention grouping (``VarlenLayout``/``WindowPartition``); for
                cross-attention the per-batch-item ``VarlenLayout``.
        Returns:
            same shape as ``x``.
        """
        heads = (self.num_heads, self.head_dim)
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs a context tensor [B, Lc, ctx_channels]")
            q = self.to_q(x).unflatten(-1, heads)
            k, v = self.to_kv(context).unflatten(-1, (2, *heads)).unbind(dim=-3)
            q, k = self._norm_qk(q, k)
            if layout is None:
                h = attention(q, k, v)
            elif isinstance(layout, VarlenLayout):
                h = layout.cross_attention(q, k, v)
            else:
                raise TypeError("cross-attention on packed tokens needs a VarlenLayout (one per item)")
        else:
            q, k, v = self.to_qkv(x).unflatten(-1, (3, *heads)).unbind(dim=-3)
            q, k = self._norm_qk(q, k)
            h = attention(q, k, v) if layout is None else layout.self_attention(q, k, v)
        return self.to_out(h.flatten(-2))


def _per_token(params: torch.Tensor, layout: VarlenLayout | None) -> torch.Tensor:
    """Per-item ``[B, C]`` -> broadcastable against dense ``[B, L, C]`` or packed ``[N, C]`` tokens."""
    return params[:, None] if layout is None else layout.broadcast(params)


class ModulatedTransformerCrossBlock(nn.Module):
    """adaLN-modulated self-attention + (unmodulated) cross-attention + modulated MLP, with gates.

    ``shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = Linear(SiLU(mod))``, then
    ``x += gate_msa * SelfAttn(LN1(x) * (1 + scale_msa) + shift_msa)``, ``x += CrossAttn(LN2(x), ctx)``,
    ``x += gate_mlp * MLP(LN3(x) * (1 + scale_mlp) + shift_mlp)``; LN eps 1e-6, only LN2 affine.

    Args:
        channels: width ``C``; ctx_channels: context width; num_heads: heads; mlp_ratio: MLP expansion;
        qk_rms_norm / qk_rms_norm_cross: q/k RMS norm in self / cross attention; qkv_bias: projection bias.
    """

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(channels, num_heads, qk_rms_norm=qk_rms_norm, qkv_bias=qkv_bias)
        self.cross_attn = MultiHeadAttention(
            channels, num_heads, ctx_channels=ctx_channels, qk_rms_norm=qk_rms_norm_cross, qkv_bias=qkv_bias
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(
        self,
        x: torch.Tensor,
        mod: torch.Tensor,
        context: torch.Tensor,
        layout: VarlenLayout | None = None,
        attn_layout: AttnLayout | None = None,
    ) -> torch.Tensor:
        """Run the block.

        Args:
            x: dense ``[B, L, C]`` (``layout=None``) or packed ``[N, C]`` with ``layout`` (one sequence per
                batch item).
            mod: ``[B, C]`` conditioning (e.g. timestep embedding).
            context: ``[B, Lc, ctx_channels]`` cross-attention tokens.
            attn_layout: packed only: self-attention grouping (default ``layout``: full per item).
        Returns:
            same shape as ``x``.
        """
        if layout is not None and layout.uniform and attn_layout is None:
            # equal-length items (e.g. a CFG pair): run densely, modulation broadcasts instead of gathers
            dense = x.reshape(len(layout.seqlens), layout.max_seqlen, x.shape[-1])
            return self.forward(dense, mod, context).reshape(x.shape)
        chunks = self.adaLN_modulation(mod).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            _per_token(c, layout) for c in chunks
        )
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.self_attn(h, layout=attn_layout or layout)
        x = x + self.cross_attn(self.norm2(x), context, layout=layout)
        h = self.norm3(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(h)

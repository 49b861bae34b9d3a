"""Structured-latent flow transformer (upstream ``SLatFlowModel``), same ``state_dict`` keys.

Data flow for a latent on occupied voxels of a ``resolution^3`` grid:
``input_layer`` (Linear) -> input res-blocks (the last one pools 2x) -> + APE on the coarse coords ->
``num_blocks`` modulated cross-attention transformer blocks over all coarse voxels of each item ->
output res-blocks on ``cat([h, skip])`` (the first one un-pools back to the fine voxels) ->
LayerNorm (no affine) -> ``out_layer``.

The model computes in the dtype of its parameters (cast the whole model with ``.to(dtype)``); norms run in
fp32 internally and the output has the input's dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from synchuman.nn.embeddings import AbsolutePositionEmbedder, TimestepEmbedder
from synchuman.nn.norms import LayerNorm32
from synchuman.nn.transformer import ModulatedTransformerCrossBlock
from synchuman.sparse import SparseConv3d, SparseTensor, downsample, upsample


class SparseResBlock3d(nn.Module):
    """Timestep-modulated sparse residual block with optional 2x down/up-sampling applied first.

    ``h = conv1(SiLU(LN_affine(x)))``; ``h = LN(h) * (1 + scale) + shift`` with
    ``scale, shift = Linear(SiLU(emb))``; ``out = conv2(SiLU(h)) + skip(x)``.
    Keys: ``norm1``, ``conv1.conv``, ``conv2.conv``, ``emb_layers.1``, ``skip_connection`` (only when the
    channel count changes).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        downsample: bool = False,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        if downsample and upsample:
            raise ValueError("a res block cannot both downsample and upsample")
        self.out_channels = out_channels or channels
        self.downsample = downsample
        self.upsample = upsample
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(self.out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, self.out_channels, 3)
        self.conv2 = SparseConv3d(self.out_channels, self.out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels))
        self.skip_connection = (
            nn.Linear(channels, self.out_channels) if channels != self.out_channels else nn.Identity()
        )

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        """``x``: ``[N, channels]`` sparse; ``emb``: ``[B, emb_channels]`` -> ``[N', out_channels]``."""
        scale, shift = self.emb_layers(emb).to(x.dtype).chunk(2, dim=1)
        if self.downsample:
            x = downsample(x, 2)
        elif self.upsample:
            x = upsample(x, 2)
        h = self.conv1(x.replace(functional.silu(self.norm1(x.feats))))
        h = self.norm2(h.feats) * (1 + x.per_item(scale)) + x.per_item(shift)
        h = self.conv2(x.replace(functional.silu(h)))
        return h.replace(h.feats + self.skip_connection(x.feats))


class SLatFlowModel(nn.Module):
    """Sparse flow transformer predicting the velocity of a structured latent.

    Args follow the upstream config (``ckpts/SecondStage/ckpts/slat_flow/config.json``): ``resolution``
    (grid size of the latent), ``in_channels``/``out_channels`` (latent channels), ``model_channels`` (width),
    ``cond_channels`` (context width), ``num_blocks``, ``num_heads`` (default ``model_channels //
    num_head_channels``), ``mlp_ratio``, ``patch_size`` (2 = one pooling stage), ``num_io_res_blocks``,
    ``io_block_channels`` (one width per pooling stage), ``pe_mode`` ("ape" only), ``qk_rms_norm``,
    ``qk_rms_norm_cross``, ``use_skip_connection``. ``use_fp16``/``use_checkpoint`` are accepted for config
    compatibility; the compute dtype is chosen at load time instead.
    """

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        num_io_res_blocks: int = 2,
        io_block_channels: list[int] | None = None,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        use_skip_connection: bool = True,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ) -> None:
        super().__init__()
        if pe_mode != "ape":
            raise NotImplementedError(f"SLatFlowModel: pe_mode {pe_mode!r} is not supported (only 'ape')")
        if share_mod:
            raise NotImplementedError("SLatFlowModel: share_mod=True is not supported (upstream uses False)")
        if io_block_channels is not None and 2 ** len(io_block_channels) != patch_size:
            raise ValueError(f"patch_size {patch_size} needs log2(patch_size) io_block_channels entries")
        self.resolution = resolution
        self.use_skip_connection = use_skip_connection
        num_heads = num_heads or model_channels // num_head_channels
        io = list(io_block_channels or [])

        self.t_embedder = TimestepEmbedder(model_channels)
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = nn.Linear(in_channels, io[0] if io else model_channels)
        self.input_blocks = nn.ModuleList()
        for chs, next_chs in zip(io, io[1:] + [model_channels], strict=False):
            self.input_blocks.extend(
                SparseResBlock3d(chs, model_channels, chs) for _ in range(num_io_res_blocks - 1)
            )
            self.input_blocks.append(SparseResBlock3d(chs, model_channels, next_chs, downsample=True))
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(
                model_channels,
                cond_channels,
                num_heads,
                mlp_ratio=mlp_ratio,
                qk_rms_norm=qk_rms_norm,
                qk_rms_norm_cross=qk_rms_norm_cross,
            )
            for _ in range(num_blocks)
        )
        mult = 2 if use_skip_connection else 1
        self.out_blocks = nn.ModuleList()
        for chs, prev_chs in zip(reversed(io), [model_channels] + list(reversed(io[1:])), strict=False):
            self.out_blocks.append(SparseResBlock3d(prev_chs * mult, model_channels, chs, upsample=True))
            self.out_blocks.extend(
                SparseResBlock3d(chs * mult, model_channels, chs) for _ in range(num_io_res_blocks - 1)
            )
        self.out_layer = nn.Linear(io[0] if io else model_channels, out_channels)

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> SparseTensor:
        """Predict the velocity.

        Args:
            x: noisy latent, ``[N, in_channels]`` on ``(b, x, y, z)`` coords in ``[0, resolution)``.
            t: ``[B]`` timesteps already scaled by 1000.
            cond: ``[B, L, cond_channels]`` context tokens.
        Returns:
            velocity ``[N, out_channels]`` on the same coords (input dtype).
        """
        dtype = self.input_layer.weight.dtype
        if cond.dim() != 3 or cond.shape[0] != x.batch_size:
            raise ValueError(f"cond must be [B={x.batch_size}, L, C]; got {tuple(cond.shape)}")
        h = x.replace(self.input_layer(x.feats.to(dtype)))
        t_emb = self.t_embedder(t).to(dtype)
        cond = cond.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        ape = h.cache.get(("ape", self.pos_embedder.channels), lambda: self.pos_embedder(h.coords[:, 1:]))
        feats = h.feats + ape.to(dtype)
        layout = h.layout
        for block in self.blocks:
            feats = block(feats, t_emb, cond, layout=layout)
        h = h.replace(feats)
        for block, skip in zip(self.out_blocks, reversed(skips), strict=True):
            h = block(h.replace(torch.cat([h.feats, skip], dim=1)) if self.use_skip_connection else h, t_emb)
        out = functional.layer_norm(h.feats.float(), h.feats.shape[-1:]).to(dtype)
        return x.replace(self.out_layer(out).to(x.dtype))

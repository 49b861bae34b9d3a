"""Structured-latent decoders conditioned on multiview image features (upstream ``SLatGaussianDecoder`` and
``SLatMeshDecoder``), same ``state_dict`` keys.

Shared trunk: ``input_layer(latent) + APE(coords)`` -> ``num_blocks`` sparse transformer blocks, each
``x += Attn(LN1(x))`` (swin windows, shifted on odd blocks), ``x += MVC(cat[LN3(x), mv_normal, mv_color])``,
``x += MLP(LN2(x))``. The per-voxel multiview features come from ``input_layer_{color,normal}`` applied to the
``[B, views, 64, 64, 4 mv_dim]`` DINOv2 feature maps, sampled at row ``63 - z`` and column ``x`` (views 0, 2)
or ``y`` (views 1, 3).

Models compute in the dtype of their parameters; outputs are fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from synchuman.models.flexicubes import Mesh, mesh_from_features
from synchuman.models.gaussians import FIELDS, GaussianConstants, Gaussians, RawGaussians, offset_perturbation
from synchuman.nn.embeddings import AbsolutePositionEmbedder
from synchuman.nn.norms import LayerNorm32
from synchuman.nn.transformer import FeedForwardNet, MultiHeadAttention
from synchuman.sparse import SparseConv3d, SparseGroupNorm32, SparseTensor, subdivide, window_partition

MV_ROW_FLIP = 63  # feature-map row of voxel z is 63 - z (upstream constant, independent of the resolution)
# views sampled per conditioning mode: (view index, coordinate axis used as the column: 1 = x, 2 = y)
MV_VIEWS = {
    "4_view": ((0, 1), (1, 2), (2, 1), (3, 2)),
    "front&back": ((0, 1), (2, 1)),
    "front": ((0, 1),),
}


def voxel_multiview_features(coords: torch.Tensor, maps: torch.Tensor, mode: str = "4_view") -> torch.Tensor:
    """Sample per-view feature maps at every voxel.

    Args:
        coords: int ``[N, 4]`` ``(b, x, y, z)``.
        maps: ``[B, V, H, W, C]`` feature maps (``H > 63 - min z``, ``W > max x, y``).
        mode: key of :data:`MV_VIEWS`.
    Returns:
        ``[N, len(views) * C]``: the views' features concatenated in view order.
    """
    c = coords.long()
    row = MV_ROW_FLIP - c[:, 3]
    return torch.cat([maps[c[:, 0], view, row, c[:, axis]] for view, axis in MV_VIEWS[mode]], dim=1)


class SparseTransformerBlock(nn.Module):
    """Self-attention + multiview-conditioning MLP + MLP block (keys ``attn``, ``mv_condition``, ``mlp``).

    Args:
        channels: width ``C``; num_heads: heads; mlp_ratio: MLP expansion;
        mv_dim: per-view feature width ``D`` (``mv_condition`` input is ``C + 2 * views * D``);
        num_views: views sampled per voxel; qk_rms_norm: RMS norm on q/k.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mv_dim: int = 1024,
        num_views: int = 4,
        qk_rms_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(channels, num_heads, qk_rms_norm=qk_rms_norm)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.mv_condition = nn.Sequential(
            nn.Linear(channels + 2 * num_views * mv_dim, 4 * channels),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * channels, channels),
        )

    def forward(
        self, x: torch.Tensor, attn_layout: object, mv_normal: torch.Tensor, mv_color: torch.Tensor
    ) -> torch.Tensor:
        """``x`` ``[N, C]`` packed voxels; ``attn_layout`` a VarlenLayout/WindowPartition; mv ``[N, k D]``."""
        x = x + self.attn(self.norm1(x), layout=attn_layout)  # type: ignore[arg-type]
        x = x + self.mv_condition(torch.cat([self.norm3(x), mv_normal, mv_color], dim=1))
        return x + self.mlp(self.norm2(x))


class _SLatDecoderTrunk(nn.Module):
    """Input layers, APE and transformer blocks shared by both decoders (see module docstring)."""

    def __init__(
        self,
        resolution: int,
        model_channels: int,
        latent_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4,
        attn_mode: str = "swin",
        window_size: int = 8,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        qk_rms_norm: bool = False,
        representation_config: dict | None = None,
        mv_dim: int = 1024,
        mv_condition_mode: str = "4_view",
        use_multiscale: bool = False,
        use_faceinfo: bool = False,
        block_mv_dim: int = 1024,
    ) -> None:
        super().__init__()
        if attn_mode not in ("swin", "full"):
            raise NotImplementedError(f"decoder attn_mode {attn_mode!r} is not supported (swin or full)")
        if pe_mode != "ape":
            raise NotImplementedError(f"decoder pe_mode {pe_mode!r} is not supported (only 'ape')")
        if use_faceinfo:
            raise NotImplementedError("decoder use_faceinfo=True is not supported (upstream uses False)")
        if mv_condition_mode not in MV_VIEWS:
            raise ValueError(
                f"mv_condition_mode must be one of {', '.join(MV_VIEWS)}; got {mv_condition_mode}"
            )
        self.resolution = resolution
        self.attn_mode = attn_mode
        self.window_size = window_size
        self.mv_condition_mode = mv_condition_mode
        self.representation_config = dict(representation_config or {})
        num_heads = num_heads or model_channels // num_head_channels
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = nn.Linear(latent_channels, model_channels)
        views = len(MV_VIEWS[mv_condition_mode])
        self.blocks = nn.ModuleList(
            SparseTransformerBlock(model_channels, num_heads, mlp_ratio, block_mv_dim, views, qk_rms_norm)
            for _ in range(num_blocks)
        )
        mv_in = 4 * mv_dim if use_multiscale else mv_dim
        self.input_layer_color = nn.Linear(mv_in, mv_dim)
        self.input_layer_normal = nn.Linear(mv_in, mv_dim)

    def _attn_layout(self, x: SparseTensor, index: int) -> object:
        if self.attn_mode == "full":
            return x.layout
        return window_partition(x, self.window_size, (self.window_size // 2) * (index % 2))

    def trunk(self, x: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor) -> SparseTensor:
        """Latent ``[N, latent_channels]`` + feature maps ``[B, V, 64, 64, F]`` -> ``[N, model_channels]``."""
        dtype = self.input_layer.weight.dtype
        for name, maps in (("mv_color", mv_color), ("mv_normal", mv_normal)):
            if maps.dim() != 5 or maps.shape[0] != x.batch_size:
                raise ValueError(f"{name} must be [B={x.batch_size}, V, H, W, C]; got {tuple(maps.shape)}")
        if int(x.coords[:, 1:].max()) > MV_ROW_FLIP:
            raise ValueError(f"voxel coordinates above {MV_ROW_FLIP} cannot be mapped onto the feature maps")
        mode = self.mv_condition_mode
        color = voxel_multiview_features(x.coords, self.input_layer_color(mv_color.to(dtype)), mode)
        normal = voxel_multiview_features(x.coords, self.input_layer_normal(mv_normal.to(dtype)), mode)
        h = self.input_layer(x.feats.to(dtype)) + self.pos_embedder(x.coords[:, 1:]).to(dtype)
        for i, block in enumerate(self.blocks):
            h = block(h, self._attn_layout(x, i), normal, color)
        return x.replace(h)


class SLatGaussianDecoder(_SLatDecoderTrunk):
    """Decodes a structured latent into ``num_gaussians`` 3D Gaussians per voxel (one object per item).

    Constructor arguments as the upstream config; ``representation_config`` holds ``num_gaussians``,
    ``voxel_size``, ``lr`` (per-field output scale), ``perturb_offset``, ``scaling_bias``, ``opacity_bias``,
    ``3d_filter_kernel_size``, ``scaling_activation``. ``block_mv_dim`` is the blocks' per-view feature width
    (upstream hard-codes 1024).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        rep = self.representation_config
        self.num_gaussians = int(rep["num_gaussians"])
        self.out_channels = self.num_gaussians * sum(size for _, size in FIELDS)
        self.out_layer = nn.Linear(self.input_layer.out_features, self.out_channels)
        perturbation = offset_perturbation(self.num_gaussians, rep["voxel_size"])
        self.register_buffer("offset_perturbation", perturbation)
        self.constants = GaussianConstants(
            scaling_bias=float(rep["scaling_bias"]),
            opacity_bias=float(rep["opacity_bias"]),
            min_kernel_size=float(rep["3d_filter_kernel_size"]),
            scaling_activation=str(rep.get("scaling_activation", "exp")),
        )

    def decode_features(
        self, x: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor
    ) -> SparseTensor:
        """Raw per-voxel Gaussian fields, fp32 ``[N, 14 * num_gaussians]``."""
        h = self.trunk(x, mv_color, mv_normal).feats.float()
        h = functional.layer_norm(h, h.shape[-1:]).to(self.out_layer.weight.dtype)
        return x.replace(self.out_layer(h).float())

    def to_gaussians(self, features: SparseTensor) -> list[RawGaussians]:
        """Split :meth:`decode_features` output into one :class:`RawGaussians` per batch item."""
        rep = self.representation_config
        lr = rep.get("lr", {})
        g = self.num_gaussians
        out = []
        for i in range(features.batch_size):
            item = features.item(i)
            feats = item.feats.float()
            fields: dict[str, torch.Tensor] = {}
            start = 0
            for name, size in FIELDS:
                raw = feats[:, start : start + g * size].reshape(-1, g, size) * float(lr.get(name, 1.0))
                start += g * size
                if name == "_xyz":
                    if rep.get("perturb_offset", False):
                        raw = raw + self.offset_perturbation.float()
                    centre = (item.coords[:, 1:].float() + 0.5) / self.resolution
                    spread = 0.5 * float(rep["voxel_size"]) / self.resolution
                    raw = centre[:, None, :] + torch.tanh(raw) * spread
                fields[name] = raw.reshape(-1, 1, size) if name == "_features_dc" else raw.reshape(-1, size)
            out.append(RawGaussians(constants=self.constants, **fields))
        return out

    def forward(self, x: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor) -> list[Gaussians]:
        """Activated Gaussians of every batch item."""
        return [raw.activate() for raw in self.to_gaussians(self.decode_features(x, mv_color, mv_normal))]


class SparseSubdivideBlock3d(nn.Module):
    """``h = conv(SiLU(GN(conv(subdivide(SiLU(GN(x)))))))``, ``out = h + skip(subdivide(x))``.

    Keys: ``act_layers.0`` (GroupNorm), ``out_layers.0.conv`` / ``out_layers.3.conv`` (3x3x3 convs),
    ``out_layers.1`` (GroupNorm), ``skip_connection.conv`` (1x1x1 conv, when the width changes).
    """

    def __init__(self, channels: int, out_channels: int | None = None, num_groups: int = 32) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels))
        self.out_layers = nn.ModuleList(
            [
                SparseConv3d(channels, out_channels, 3),
                SparseGroupNorm32(num_groups, out_channels),
                nn.SiLU(),
                SparseConv3d(out_channels, out_channels, 3),
            ]
        )
        self.skip_connection = (
            SparseConv3d(channels, out_channels, 1) if out_channels != channels else nn.Identity()
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        """``[N, channels]`` -> ``[8N, out_channels]`` at twice the resolution."""
        h = self.act_layers[0](x)
        h = subdivide(h.replace(functional.silu(h.feats)))
        h = self.out_layers[1](self.out_layers[0](h))
        h = self.out_layers[3](h.replace(self.out_layers[2](h.feats)))
        # the skip (identity or 1x1 conv) acts per voxel and subdivision copies rows, so it runs before the
        # subdivision: 8x fewer rows, and no [8N, channels] copy of x held through the convs above
        skip = subdivide(self.skip_connection(x))
        return h.replace(h.feats + skip.feats)


class SLatMeshDecoder(_SLatDecoderTrunk):
    """Decodes a structured latent into a FlexiCubes mesh at 4x the latent resolution (one per item).

    Constructor arguments as the upstream config plus ``block_mv_dim`` (see the GS decoder) and
    ``subdivide_num_groups`` (GroupNorm groups of the subdivision blocks; upstream hard-codes 32).
    ``representation_config["use_color"]`` adds the 8x6 per-corner vertex attributes.
    """

    def __init__(self, *args: object, subdivide_num_groups: int = 32, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        c = self.input_layer.out_features
        self.use_color = bool(self.representation_config.get("use_color", False))
        self.mesh_resolution = 4 * self.resolution
        self.upsample = nn.ModuleList(
            [
                SparseSubdivideBlock3d(c, c // 4, subdivide_num_groups),
                SparseSubdivideBlock3d(c // 4, c // 8, subdivide_num_groups),
            ]
        )
        self.out_channels = 53 + (48 if self.use_color else 0)
        self.out_layer = nn.Linear(c // 8, self.out_channels)

    def decode_features(
        self, x: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor
    ) -> SparseTensor:
        """Raw fp32 per-cube features ``[64 N, 101]`` on the subdivided coords (4x resolution)."""
        h = self.trunk(x, mv_color, mv_normal)
        for block in self.upsample:
            h = block(h)
        return h.replace(self.out_layer(h.feats).float())

    def to_meshes(self, features: SparseTensor) -> list[Mesh]:
        """One mesh per batch item from :meth:`decode_features` output."""
        return [
            mesh_from_features(item.coords[:, 1:], item.feats, self.mesh_resolution, self.use_color)
            for item in (features.item(i) for i in range(features.batch_size))
        ]

    def forward(self, x: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor) -> list[Mesh]:
        """Meshes of every batch item."""
        return self.to_meshes(self.decode_features(x, mv_color, mv_normal))

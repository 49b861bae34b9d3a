"""``SyncHuman_2D3DCrossSpaceDiffusion``: the multiview UNet (2D) and the sparse-structure flow transformer
(3D) denoised together, coupled by dual cross-attention sync blocks.

Forward, in order (``L`` UNet levels, upstream ``L = 4``; ``ss_level = 1``, ``mv_level = 2``):

1. 2D embedding ``emb = time_embedding(sinusoid(t)) + class_embedding(class_labels)``; ``conv_in``.
2. 3D tokens ``h = input_layer(x) + pos_emb`` (``G^3`` tokens, ``G = resolution``), ``t3 = t_embedder(t3)``,
   then 3D blocks ``[0, split[0])``.
3. Down blocks; after down block ``ss_level`` the 2D->3D block ``SS[0]`` updates ``h``; after down block
   ``mv_level`` the 3D->2D block ``MV[0]`` updates the 2D sample (the skips keep the pre-sync values).
4. Mid block, then 3D blocks ``[split[0], split[1])``.
5. Up blocks; before the up block that runs at ``mv_level``'s resolution, ``MV[1]`` updates the sample; before
   the one at ``ss_level``'s resolution, ``SS[1]`` updates ``h``.
6. 3D blocks ``[split[1], end)``, LayerNorm (no affine), ``out_layer`` -> ``[B, 8, G, G, G]``;
   2D GroupNorm -> SiLU -> ``conv_out``.

Upstream triggers the sync blocks on feature-map sizes 24 and 12 and hard-codes 16^3 / 12^3 / 16^2 grids and
the sync widths; here they derive from the config (same values at full size): the SS blocks pool the 2D map to
``G x G``, the MV blocks pool the structure to the 2D map's size, the widths are those of the UNet levels the
blocks attach to, the structure width is ``model_channels``, heads ``num_heads`` of ``model_channels //
num_heads``.

Batch layout: the 2D batch is ``N = 2 B V`` (see :mod:`synchuman.models.mv_unet`), the 3D batch is ``B``
(2D group ``b`` pairs with 3D item ``b``). ``trellis_t`` may have batch 1 (broadcast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from torch.nn import functional

from synchuman.models.cross_space_sync import DualCrossAttentionMV, DualCrossAttentionSS
from synchuman.models.mv_unet import DownBlock, MidBlock, UpBlock
from synchuman.nn.embeddings import AbsolutePositionEmbedder, TimestepEmbedder
from synchuman.nn.transformer import ModulatedTransformerCrossBlock

#: Upstream config keys that only matter for training / EMA bookkeeping or for code paths the released
#: config does not take; accepted and ignored.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "decay",
        "inv_gamma",
        "min_decay",
        "optimization_step",
        "power",
        "update_after_step",
        "use_ema_warmup",
        "use_checkpoint",
        "use_fp16",
        "addition_channels",
        "addition_embed_type_num_heads",
        "addition_time_embed_dim",
        "num_head_channels",
        "mv_cond_channels",
        "upcast_attention",
        "mid_block_only_cross_attention",
    }
)

#: Config values our implementation supports (the released model's); anything else is refused.
REQUIRED_VALUES: dict[str, Any] = {
    "class_embed_type": "projection",
    "time_embedding_type": "positional",
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "timestep_post_act": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "mid_block_type": "UNetMidBlockMV2DCrossAttn",
    "selfattn_block": "self_rowwise",
    "multiview_attention": True,
    "mvcd_attention": True,
    "sparse_mv_attention": True,
    "cd_attention_last": False,
    "cd_attention_mid": False,
    "use_dino": False,
    "addition_downsample": False,
    "num_attention_heads": None,
    "use_linear_projection": True,
    "transformer_layers_per_block": 1,
    "cross_attention_norm": None,
    "pe_mode": "ape",
    "patch_size": 1,
    "share_mod": False,
    "num_dual_CrossAttblocks": 2,
    "act_fn": "silu",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "resnet_out_scale_factor": 1.0,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "center_input_sample": False,
}
_CROSS_DOWN, _PLAIN_DOWN = "CrossAttnDownBlockMV2D", "DownBlock2D"
_CROSS_UP, _PLAIN_UP = "CrossAttnUpBlockMV2D", "UpBlock2D"


def _check_config(config: dict[str, Any]) -> None:
    unknown = sorted(set(config) - IGNORED_CONFIG_KEYS - set(REQUIRED_VALUES))
    if unknown:
        raise TypeError(f"SyncHuman_2D3DCrossSpaceDiffusion: unknown config keys {unknown}")
    bad = {k: config[k] for k, want in REQUIRED_VALUES.items() if k in config and config[k] != want}
    if bad:
        wanted = {k: REQUIRED_VALUES[k] for k in bad}
        raise ValueError(f"unsupported config values {bad}; this implementation supports {wanted}")


class SyncHuman_2D3DCrossSpaceDiffusion(nn.Module):  # noqa: N801 - the upstream class (config) name
    """2D multiview UNet + 3D sparse-structure flow (constructor keywords = the upstream diffusers config).

    Structural keywords of ours (defaults = upstream): ``block_split`` (3D blocks run before the down path
    and after the mid block), ``ss_level`` / ``mv_level`` (down-block indices the sync blocks attach to).
    """

    def __init__(
        self,
        sample_size: int = 96,
        in_channels: int = 8,
        out_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = (_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _PLAIN_DOWN),
        up_block_types: Sequence[str] = (_PLAIN_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP),
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: Sequence[int] = (5, 10, 20, 20),
        projection_class_embeddings_input_dim: int = 2048,
        num_views: int = 5,
        resolution: int = 16,
        trellis_in_channels: int = 8,
        trellis_out_channels: int = 8,
        model_channels: int = 1024,
        cond_channels: int = 1024,
        num_blocks: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = True,
        qk_rms_norm_cross: bool = False,
        block_split: Sequence[int] = (8, 16),
        ss_level: int = 1,
        mv_level: int = 2,
        **config: Any,
    ) -> None:
        super().__init__()
        _check_config(config)
        levels = len(block_out_channels)
        heads = (
            list(attention_head_dim)
            if not isinstance(attention_head_dim, int)
            else [attention_head_dim] * levels
        )
        if not (len(down_block_types) == len(up_block_types) == len(heads) == levels):
            raise ValueError(
                "down/up block types, attention_head_dim and block_out_channels need equal lengths"
            )
        if not 0 <= block_split[0] <= block_split[1] <= num_blocks:
            raise ValueError(
                f"block_split {list(block_split)} must be ordered within the {num_blocks} 3D blocks"
            )
        if not 0 <= ss_level < mv_level < levels - 1:
            raise ValueError(f"need 0 <= ss_level < mv_level < {levels - 1}; got {ss_level}, {mv_level}")
        for i in (ss_level, mv_level):
            if down_block_types[i] != _CROSS_DOWN:
                raise ValueError(
                    f"sync blocks attach to attention down blocks; down block {i} is {down_block_types[i]}"
                )
        self.sample_size = sample_size
        self.num_views = num_views
        self.grid = resolution
        self.trellis_in_channels = trellis_in_channels
        self.block_split = tuple(block_split)
        self.ss_level, self.mv_level = ss_level, mv_level
        temb = 4 * block_out_channels[0]

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb)
        self.class_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, temb)
        common = {
            "temb": temb,
            "eps": norm_eps,
            "groups": norm_num_groups,
            "num_views": num_views,
            "cross_attention_dim": cross_attention_dim,
        }
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(down_block_types):
            if kind not in (_CROSS_DOWN, _PLAIN_DOWN):
                raise ValueError(f"unsupported down block type {kind!r}")
            self.down_blocks.append(
                DownBlock(
                    block_out_channels[max(i - 1, 0)],
                    block_out_channels[i],
                    layers=layers_per_block,
                    downsample=i < levels - 1,
                    attention_heads=heads[i] if kind == _CROSS_DOWN else None,
                    **common,
                )
            )
        self.mid_block = MidBlock(
            block_out_channels[-1], temb, norm_eps, norm_num_groups, heads[-1], cross_attention_dim, num_views
        )
        reversed_channels, reversed_heads = block_out_channels[::-1], heads[::-1]
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(up_block_types):
            if kind not in (_CROSS_UP, _PLAIN_UP):
                raise ValueError(f"unsupported up block type {kind!r}")
            self.up_blocks.append(
                UpBlock(
                    reversed_channels[min(i + 1, levels - 1)],
                    reversed_channels[max(i - 1, 0)],
                    reversed_channels[i],
                    layers=layers_per_block + 1,
                    upsample=i < levels - 1,
                    attention_heads=reversed_heads[i] if kind == _CROSS_UP else None,
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

        # 3D branch (TRELLIS sparse-structure flow, dense 16^3 tokens)
        self.t_embedder = TimestepEmbedder(model_channels)
        axes = torch.meshgrid(*[torch.arange(resolution)] * 3, indexing="ij")
        positions = torch.stack(axes, dim=-1).reshape(-1, 3)
        self.register_buffer("pos_emb", AbsolutePositionEmbedder(model_channels, 3)(positions))
        self.input_layer = nn.Linear(trellis_in_channels, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(
                model_channels, cond_channels, num_heads, mlp_ratio, qk_rms_norm, qk_rms_norm_cross
            )
            for _ in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, trellis_out_channels)

        # sync blocks: [0] on the down path, [1] on the up path
        self.ss_up_block = levels - 2 - ss_level
        self.mv_up_block = levels - 2 - mv_level
        up_in = [block_out_channels[-1]] + list(reversed_channels[:-1])
        sync = {
            "structure_dim": model_channels,
            "heads": num_heads,
            "dim_head": model_channels // num_heads,
            "num_views": num_views,
        }
        self.dual_CrossAttblocks_SS = nn.ModuleList(
            [
                DualCrossAttentionSS(block_out_channels[ss_level], **sync),
                DualCrossAttentionSS(up_in[self.ss_up_block], **sync),
            ]
        )
        self.dual_CrossAttblocks_MV = nn.ModuleList(
            [
                DualCrossAttentionMV(block_out_channels[mv_level], **sync),
                DualCrossAttentionMV(up_in[self.mv_up_block], **sync),
            ]
        )

    def embed_2d(
        self, timestep: torch.Tensor | float, class_labels: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """``emb`` ``[N, 4 C0]`` from the 2D timestep (scalar / ``[1]`` / ``[N]``) and ``class_labels``."""
        device = class_labels.device
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        dtype = self.time_embedding.linear_1.weight.dtype
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        return emb + self.class_embedding(class_labels.to(dtype))

    def _run_3d(
        self, h: torch.Tensor, t3: torch.Tensor, cond: torch.Tensor, start: int, stop: int
    ) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            h = block(h, t3, cond)
        return h

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor,
        trellis_x: torch.Tensor,
        trellis_t: torch.Tensor,
        trellis_cond: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step of both branches.

        Args:
            sample: ``[N, in_channels, S, S]`` 2D input (noisy latent + image latent), ``N = 2 B V``.
            timestep: 2D timestep ``1000 t`` (python float, ``[1]`` or ``[N]``).
            encoder_hidden_states: ``[N, 77, cross_attention_dim]`` prompt embeddings.
            class_labels: ``[N, projection_class_embeddings_input_dim]``.
            trellis_x: ``[B, 8, G, G, G]`` 3D latent; trellis_t: ``[1]`` or ``[B]`` 3D timestep ``1000 t``.
            trellis_cond: ``[B, Lc, cond_channels]`` conditioning tokens.
        Returns:
            ``(v2d [N, out_channels, S, S], v3d [B, 8, G, G, G])``.
        """
        b, grid = trellis_x.shape[0], self.grid
        n = sample.shape[0]
        if n != 2 * b * self.num_views or trellis_x.shape[2:] != (grid,) * 3:
            raise ValueError(
                f"2D batch {n} must be 2 x {b} (3D batch) x {self.num_views} views and the 3D latent "
                f"[B, {self.trellis_in_channels}, {grid}, {grid}, {grid}]; got {tuple(sample.shape)}, "
                f"{tuple(trellis_x.shape)}"
            )
        dtype = self.conv_in.weight.dtype
        emb = self.embed_2d(timestep, class_labels, n)
        prompt = encoder_hidden_states.to(dtype)
        x = self.conv_in(sample.to(dtype))

        h = self.input_layer(trellis_x.to(dtype).reshape(b, self.trellis_in_channels, -1).transpose(1, 2))
        h = h + self.pos_emb.to(dtype)
        t3 = self.t_embedder(trellis_t.reshape(-1))
        cond = trellis_cond.to(dtype)
        first, second = self.block_split
        h = self._run_3d(h, t3, cond, 0, first)

        skips = [x]
        for i, block in enumerate(self.down_blocks):
            x, block_skips = block(x, emb, prompt)
            skips += block_skips
            if i == self.ss_level:
                h = self.dual_CrossAttblocks_SS[0](x, h, grid)
            elif i == self.mv_level:
                x = self.dual_CrossAttblocks_MV[0](x, h, grid)
        x = self.mid_block(x, emb, prompt)
        h = self._run_3d(h, t3, cond, first, second)
        for i, block in enumerate(self.up_blocks):
            if i == self.mv_up_block:
                x = self.dual_CrossAttblocks_MV[1](x, h, grid)
            elif i == self.ss_up_block:
                h = self.dual_CrossAttblocks_SS[1](x, h, grid)
            x = block(x, skips, emb, prompt)
        h = self._run_3d(h, t3, cond, second, len(self.blocks))

        h = self.out_layer(functional.layer_norm(h, h.shape[-1:]))
        v3d = h.transpose(1, 2).reshape(b, -1, grid, grid, grid)
        v2d = self.conv_out(functional.silu(self.conv_norm_out(x)))
        return v2d, v3d

"""DINOv2 ViT/14 with register tokens (the torch-hub ``dinov2_vitl14_reg`` model), same ``state_dict`` keys,
plus :class:`DinoV2Encoder`, the two ways SyncHuman uses it.

Tokens: ``[cls, reg_0 .. reg_{R-1}, patches row-major]``. The cls token gets its position embedding before
the registers are inserted; registers get none. For an input whose patch grid differs from the native one the
patch position embeddings are resized (bicubic with antialiasing, fp32). Blocks are pre-norm
``x += ls1 * Attn(norm1(x))``, ``x += ls2 * MLP(norm2(x))`` (LayerNorm eps 1e-6, exact GELU).

- conditioning (both stages): ``x_prenorm`` (the last block's output, before the final norm) of the 518x518
  crop, layer-normed without affine -> ``[1, 1 + R + 37^2, D]``;
- multiview features (stage 2): the 768^2 views resized to 896^2 (bilinear), the outputs of blocks 4, 11, 17,
  23 through the final norm, patch tokens only, concatenated -> ``[1, V, 64, 64, 4 D]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from synchuman.checkpoints.loading import (
    CheckpointError,
    load_state_dict_strict,
    parse_dtype,
    read_config,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Blocks whose outputs make the stage-2 multiview features (upstream, for the 24-block ViT-L).
MULTIVIEW_LAYERS = (4, 11, 17, 23)
MULTIVIEW_SIZE = 896


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(functional.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float, bias: dict) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads, bias["qkv"], bias["proj"])
        self.ls1 = _LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), bias["ffn"])
        self.ls2 = _LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """ViT with register tokens; constructor keywords as the hub's ``_make_dinov2_model`` (MLP FFN only)."""

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float = 1.0,
        num_register_tokens: int = 4,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        ffn_layer: str = "mlp",
        block_chunks: int = 0,
    ) -> None:
        super().__init__()
        if ffn_layer != "mlp" or block_chunks != 0:
            raise NotImplementedError("only ffn_layer='mlp' with block_chunks=0 (the ViT-L/14-reg4 layout)")
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        grid = img_size // patch_size
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused at inference; kept for the keys
        bias = {"qkv": qkv_bias, "proj": proj_bias, "ffn": ffn_bias}
        self.blocks = nn.ModuleList(
            _Block(embed_dim, num_heads, mlp_ratio, init_values, bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    @property
    def embed_dim(self) -> int:
        return self.cls_token.shape[-1]

    def interpolate_pos_encoding(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + h w, D]`` for an image of ``height x width`` pixels (``tokens`` is
        ``[B, 1 + h w, D]``: cls + patches)."""
        native = self.pos_embed.shape[1] - 1
        h, w = height // self.patch_size, width // self.patch_size
        if tokens.shape[1] - 1 == native and h == w:
            return self.pos_embed
        pos = self.pos_embed.float()
        m = int(math.sqrt(native))
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((h + self.interpolate_offset) / m, (w + self.interpolate_offset) / m)
            grid = functional.interpolate(
                grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            grid = functional.interpolate(
                grid, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias
            )
        patches = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` (normalised) -> ``[B, 1 + R + (H/14)(W/14), D]``."""
        b, _, height, width = x.shape
        tokens = self.patch_embed(x.to(self.pos_embed.dtype))
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens, height, width)
        return torch.cat([tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x_prenorm`` (last block output), and the normed cls / register / patch tokens."""
        h = self.prepare_tokens(x)
        for block in self.blocks:
            h = block(h)
        normed = self.norm(h)
        r = self.num_register_tokens
        return {
            "x_prenorm": h,
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : 1 + r],
            "x_norm_patchtokens": normed[:, 1 + r :],
        }

    def forward(self, x: torch.Tensor, is_training: bool = True) -> dict[str, torch.Tensor] | torch.Tensor:
        """Hub semantics: the feature dict when ``is_training``, else the normed cls token."""
        features = self.forward_features(x)
        return features if is_training else features["x_norm_clstoken"]

    def get_intermediate_layers(self, x: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Block outputs (0-based ``indices``) through the final norm, patch tokens only: ``[B, h w, D]``."""
        wanted = set(indices)
        if not wanted or max(wanted) >= len(self.blocks) or min(wanted) < 0:
            raise ValueError(f"block indices {list(indices)} out of range for {len(self.blocks)} blocks")
        h = self.prepare_tokens(x)
        taken: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            h = block(h)
            if i in wanted:
                taken[i] = self.norm(h)[:, 1 + self.num_register_tokens :]
        return tuple(taken[i] for i in indices)


def load_dinov2(
    folder: str | Path, device: str | torch.device = "cpu", dtype: Any = "float32"
) -> DinoVisionTransformer:
    """Build the model of ``folder/config.json`` and load its torch-hub ``.pth`` weights strictly."""
    from synchuman.checkpoints.layout import DINOV2_WEIGHTS_NAME

    folder = Path(folder)
    name, args = read_config(folder)
    if name != "DinoVisionTransformer":
        raise CheckpointError(f"{folder}/config.json names {name!r}; expected DinoVisionTransformer")
    weights = folder / DINOV2_WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist; `synchuman ckpts pull` fetches the DINOv2 weights")
    with torch.device("meta"):
        model = DinoVisionTransformer(**args)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt pickles
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    load_state_dict_strict(model, state, what=f"DINOv2 ({folder})")
    return model.to(device=device, dtype=parse_dtype(dtype)).eval()


class DinoV2Encoder:
    """DINOv2 as SyncHuman uses it: the conditioning tokens and the stage-2 multiview features."""

    def __init__(self, model: DinoVisionTransformer) -> None:
        self.model = model
        param = model.pos_embed
        self.device, self.dtype = param.device, param.dtype
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        if len(model.blocks) <= max(MULTIVIEW_LAYERS):
            raise CheckpointError(
                f"DINOv2 has {len(model.blocks)} blocks; the stage-2 features need blocks {MULTIVIEW_LAYERS}"
            )

    @classmethod
    def from_checkpoints(
        cls, layout: Any, device: str | torch.device = "cpu", dtype: Any = "float32"
    ) -> DinoV2Encoder:
        """Load ``layout.dinov2`` (a :class:`~synchuman.checkpoints.layout.CheckpointLayout`)."""
        return cls(load_dinov2(layout.dinov2, device, dtype))

    def _normalised(self, images: Sequence[np.ndarray], size: int | None = None) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([np.asarray(i, dtype=np.uint8) for i in images])).to(self.device)
        x = batch.permute(0, 3, 1, 2).float() / 255.0
        if size is not None and x.shape[-1] != size:
            x = functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return ((x - self._mean) / self._std).to(self.dtype)

    @torch.inference_mode()
    def condition(self, crop: np.ndarray) -> torch.Tensor:
        """uint8 ``[518, 518, 3]`` crop -> layer-normed ``x_prenorm`` ``[1, 1 + R + 37^2, D]``."""
        if crop.shape != (518, 518, 3):
            raise ValueError(f"the conditioning crop must be [518, 518, 3], got {list(crop.shape)}")
        tokens = self.model.forward_features(self._normalised([crop]))["x_prenorm"]
        return functional.layer_norm(tokens.float(), tokens.shape[-1:]).to(self.dtype)

    @torch.inference_mode()
    def multiview_features(self, views: Sequence[np.ndarray]) -> torch.Tensor:
        """``V`` uint8 ``[H, W, 3]`` views -> ``[1, V, 64, 64, 4 D]`` (views resized to 896^2)."""
        x = self._normalised(views, MULTIVIEW_SIZE)
        layers = self.model.get_intermediate_layers(x, MULTIVIEW_LAYERS)
        grid = MULTIVIEW_SIZE // self.model.patch_size
        return torch.cat(layers, dim=-1).reshape(1, len(views), grid, grid, -1)

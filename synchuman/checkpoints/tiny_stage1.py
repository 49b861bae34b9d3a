"""Tiny random stage-1 checkpoints in the real layout (``OneStage/...``, see the stage-1 pipeline).

Small widths everywhere and a VAE with 6 levels (x32), so the diffusion model runs at 24^2 instead of 96^2;
the structural settings that the pipeline depends on stay real: 5 views, 768^2 views, the 16^3 structure
latent decoded to the 64^3 grid, CLIP image embeddings + noise-level embedding as class labels, 7-view prompt
files. The 3D conditioning width equals the tiny DINOv2's (:data:`TINY_DINOV2_CONFIG`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
from synchuman.checkpoints.full_size import (
    FEATURE_EXTRACTOR_CONFIG,
    PROMPT_TOKENS,
    PROMPT_VIEWS,
    calibrate_ss_occupancy_,
)
from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.loading import WEIGHTS_NAME
from synchuman.checkpoints.tiny_common import state_dict_for_saving, write_json, write_model_folder

CLIP_PROJECTION = 16
#: Occupied fraction of the 64^3 grid the tiny decoder is calibrated to (~5k voxels: keeps CPU stage 2 fast).
TINY_SS_OCCUPANCY = 0.02
CROSS_ATTENTION_DIM = 16

#: Tiny ``SyncHuman_2D3DCrossSpaceDiffusion`` (diffusers-style config; unknown keys would be refused).
TINY_DIFFUSION_CONFIG: dict[str, Any] = {
    "_class_name": "SyncHuman_2D3DCrossSpaceDiffusion",
    "sample_size": 24,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockMV2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlockMV2D"] * 3,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "attention_head_dim": [2, 1, 2, 2],
    "cross_attention_dim": CROSS_ATTENTION_DIM,
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": 2 * CLIP_PROJECTION,
    "num_views": 5,
    "resolution": 16,
    "model_channels": 32,
    "cond_channels": int(TINY_DINOV2_CONFIG["args"]["embed_dim"]),
    "num_blocks": 3,
    "num_heads": 2,
    "block_split": [1, 2],
    "qk_rms_norm": True,
    "use_linear_projection": True,
}

#: Tiny TRELLIS sparse-structure decoder: 16^3 -> 64^3 (3 stages).
TINY_SS_DECODER_CONFIG: dict[str, Any] = {
    "name": "SparseStructureDecoder",
    "args": {
        "out_channels": 1,
        "latent_channels": 8,
        "num_res_blocks": 1,
        "num_res_blocks_middle": 1,
        "channels": [16, 8, 8],
        "use_fp16": False,
    },
}


#: Tiny AutoencoderKL: 6 levels (768^2 views <-> 24^2 latents), 8 channels.
TINY_VAE_CONFIG: dict[str, Any] = {
    "down_block_types": ["DownEncoderBlock2D"] * 6,
    "up_block_types": ["UpDecoderBlock2D"] * 6,
    "block_out_channels": [8] * 6,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}

#: Tiny CLIPVisionModelWithProjection (224 input, 7x7 patches of 32).
TINY_IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": CLIP_PROJECTION,
}


def _write_vae(folder: Path, seed: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(str(folder))


def _write_clip(layout: CheckpointLayout, seed: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(**TINY_IMAGE_ENCODER_CONFIG)
    CLIPVisionModelWithProjection(config).save_pretrained(str(layout.image_encoder))
    write_json(layout.feature_extractor_config, FEATURE_EXTRACTOR_CONFIG)


def write_tiny_stage1(root: Path, seed: int = 0) -> None:
    """Write tiny random stage-1 checkpoints below the checkpoint root ``root`` (``root/OneStage/...``).

    The DINOv2 folder is written by :func:`synchuman.checkpoints.tiny.write_tiny_tree` (shared with stage 2).
    """
    layout = CheckpointLayout(Path(root))
    write_model_folder(layout.diffusion_2d3d, TINY_DIFFUSION_CONFIG, seed + 11)
    decoder = write_model_folder(layout.ss_decoder, TINY_SS_DECODER_CONFIG, seed + 12)
    calibrate_ss_occupancy_(decoder, torch.device("cpu"), TINY_SS_OCCUPANCY)
    save_file(state_dict_for_saving(decoder), str(layout.ss_decoder / WEIGHTS_NAME))
    _write_vae(layout.vae, seed + 13)
    _write_clip(layout, seed + 14)
    generator = torch.Generator().manual_seed(seed + 15)
    layout.prompt_embeds_dir.mkdir(parents=True, exist_ok=True)
    for path in (layout.normal_prompt_embeds, layout.color_prompt_embeds):
        torch.save(torch.randn(PROMPT_VIEWS, PROMPT_TOKENS, CROSS_ATTENTION_DIM, generator=generator), path)
    subdirs = {
        "SyncHuman_2D3DCrossSpaceDiffusion": layout.diffusion_2d3d.name,
        "vae": layout.vae.name,
        "image_encoder": layout.image_encoder.name,
        "feature_extractor": layout.feature_extractor_config.parent.name,
        "sparse_structure_decoder": layout.ss_decoder.name,
    }
    write_json(
        layout.stage1_pipeline_config,
        {
            "name": "SyncHumanOneStagePipeline",
            "num_views": 5,
            "metadata": {k: {"subdir": v} for k, v in subdirs.items()},
        },
    )

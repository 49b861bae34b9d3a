"""Tiny random stage-2 checkpoints in the real layout (``SecondStage/pipeline.json`` and ``ckpts/*``).

The three models keep the real structural settings (grid resolution 64, patch 2, swin window 8, 8 latent
channels, 32 Gaussians per voxel, the real representation settings) and shrink only widths and depths. The
conditioning widths follow the tiny DINOv2 (``cond_channels`` of the flow and ``mv_dim`` of the decoders equal
its width). ``pipeline.json`` has the real sampler settings and normalisation format, with
``image_cond_model`` already resolved to the local DINOv2 folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synchuman.checkpoints.layout import DINOV2_LOCAL_REF, CheckpointLayout
from synchuman.checkpoints.tiny_common import write_json, write_model_folder

RESOLUTION = 64
LATENT_CHANNELS = 8

#: Real sampler settings of the release's ``SecondStage/pipeline.json``.
SAMPLER = {
    "name": "FlowEulerGuidanceIntervalSampler",
    "args": {"sigma_min": 1e-5},
    "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0},
}

#: Representation settings of the release's Gaussian decoder config.
GAUSSIAN_REPRESENTATION = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
    "perturb_offset": True,
    "voxel_size": 1.5,
    "num_gaussians": 32,
    "2d_filter_kernel_size": 0.1,
    "3d_filter_kernel_size": 9e-4,
    "scaling_bias": 4e-3,
    "opacity_bias": 0.1,
    "scaling_activation": "softplus",
}


def flow_config(cond_channels: int) -> dict[str, Any]:
    """Tiny ``SLatFlowModel`` config (64 wide, 2 blocks, one pooling stage at 16 channels)."""
    return {
        "name": "SLatFlowModel",
        "args": {
            "resolution": RESOLUTION, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
            "model_channels": 64, "cond_channels": cond_channels, "num_blocks": 2, "num_heads": 2,
            "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [16],
            "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": False,
        },
    }


def decoder_config(name: str, mv_dim: int, **extra: Any) -> dict[str, Any]:
    """Tiny swin decoder config: 64 wide, 2 blocks, window 8 at resolution 64, 4-view features of width
    ``mv_dim`` (also the blocks' per-view width, hard-coded to 1024 upstream); ``extra`` args are added."""
    return {
        "name": name,
        "args": {
            "resolution": RESOLUTION, "model_channels": 64, "latent_channels": LATENT_CHANNELS,
            "num_blocks": 2, "num_heads": 2, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8,
            "use_fp16": False, "mv_condition_mode": "4_view", "use_multiscale": True, "use_faceinfo": False,
            "mv_dim": mv_dim, "block_mv_dim": mv_dim, **extra,
        },
    }


def pipeline_config(mean: list[float], std: list[float]) -> dict[str, Any]:
    """``SecondStage/pipeline.json`` with the real sampler settings and the given latent normalisation."""
    return {
        "name": "SyncHumanTwoStagePipeline",
        "args": {
            "models": {
                "slat_decoder_gs": "ckpts/decoder_GS",
                "slat_decoder_mesh": "ckpts/decoder_Mesh",
                "slat_flow_model": "ckpts/slat_flow",
            },
            "slat_sampler": SAMPLER,
            "slat_normalization": {"mean": mean, "std": std},
            "image_cond_model": DINOV2_LOCAL_REF,
        },
    }


def write_tiny_stage2(root: Path, seed: int, dinov2_dim: int) -> None:
    """Write tiny random stage-2 checkpoints below ``root`` (a checkpoint root, e.g. ``ckpts``).

    Args:
        root: checkpoint root; files go to ``root/SecondStage/...``.
        seed: base seed (each model gets its own offset).
        dinov2_dim: width of the (tiny) DINOv2 whose features condition the flow and the decoders.
    """
    layout = CheckpointLayout(root)
    write_model_folder(layout.slat_flow, flow_config(dinov2_dim), seed + 1)
    gs = decoder_config("SLatGaussianDecoder", dinov2_dim, representation_config=GAUSSIAN_REPRESENTATION)
    write_model_folder(layout.decoder_gs, gs, seed + 2)
    # 8 groups: the subdivision blocks' GroupNorms see 64 / 8 = 8 channels (upstream: 32 groups of 96).
    mesh = decoder_config("SLatMeshDecoder", dinov2_dim, representation_config={"use_color": True},
                          subdivide_num_groups=8)
    write_model_folder(layout.decoder_mesh, mesh, seed + 3)
    mean = [round(0.5 * ((seed + i) % 5 - 2), 3) for i in range(LATENT_CHANNELS)]
    std = [round(1.0 + 0.25 * ((seed + i) % 4), 3) for i in range(LATENT_CHANNELS)]
    write_json(layout.stage2_pipeline, pipeline_config(mean, std))

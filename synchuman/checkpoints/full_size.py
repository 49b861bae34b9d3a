"""``synchuman ckpts make-random``: FULL-SIZE models with random weights in exactly the real layout.

For benchmarks on machines without the real weights (the deployment bench, memory and speed measurements):
every model has the real architecture (the upstream configs below), its parameters are random but well scaled
(``N(0, 1/fan_in)`` matrices, so activations stay finite through the full depth) and are stored in the
requested dtype; buffers keep the values the constructor computed. The noise is drawn on the GPU when one is
given, and the tree passes ``synchuman ckpts verify``. Outputs made with it are meaningless.

Sizes (fp16): 2D3D diffusion 3.4 GB, CLIP ViT-H image encoder 1.3 GB, VAE 0.17 GB, SS decoder 0.15 GB,
slat flow 1.2 GB, two decoders 1.8 GB, DINOv2 1.2 GB (fp32, as the hub file) -> about 9.2 GB. Stage 2 alone
takes 24 s on 2 CPU cores; on a GPU the time is mostly the disk writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from synchuman.checkpoints.dinov2_config import REAL_DINOV2_CONFIG
from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.loading import CONFIG_NAME, WEIGHTS_NAME
from synchuman.checkpoints.shapes import build_meta_model
from synchuman.checkpoints.tiny_common import randomize_, write_json
from synchuman.checkpoints.tiny_stage2 import GAUSSIAN_REPRESENTATION, LATENT_CHANNELS, pipeline_config
from synchuman.checkpoints.verify import RANDOM_MARKER, TINY_MARKER

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
RANDOM_NOTICE = (
    "These checkpoints were written by `synchuman ckpts make-random`: FULL-SIZE models with RANDOM weights\n"
    "in the real layout, for benchmarks. Anything generated with them is meaningless.\n"
)

#: Upstream ``OneStage/SyncHuman_2D3DCrossSpaceDiffusion/config.json`` (diffusers 0.29.1 format; SD-2.1-unclip
#: UNet with multiview attention + the 24-block TRELLIS sparse-structure flow; EMA bookkeeping keys included).
DIFFUSION_2D3D_CONFIG: dict[str, Any] = {
    "_class_name": "SyncHuman_2D3DCrossSpaceDiffusion", "_diffusers_version": "0.29.1",
    "act_fn": "silu", "addition_channels": [1280, 1280, 1280], "addition_downsample": False,
    "addition_embed_type": None, "addition_embed_type_num_heads": 64, "addition_time_embed_dim": None,
    "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "cd_attention_last": False, "cd_attention_mid": False, "center_input_sample": False,
    "class_embed_type": "projection", "class_embeddings_concat": False, "cond_channels": 1024,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 1024, "cross_attention_norm": None,
    "decay": 0.9999,
    "down_block_types": ["CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D",
                         "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8,
    "inv_gamma": 1.0, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlockMV2DCrossAttn", "min_decay": 0.0,
    "mlp_ratio": 4, "model_channels": 1024, "multiview_attention": True, "mv_cond_channels": 1024,
    "mvcd_attention": True, "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None,
    "num_blocks": 24, "num_class_embeds": None, "num_dual_CrossAttblocks": 2, "num_head_channels": 64,
    "num_heads": 16, "num_views": 5, "only_cross_attention": False, "optimization_step": 42500,
    "out_channels": 4, "patch_size": 1, "pe_mode": "ape", "power": 2 / 3,
    "projection_class_embeddings_input_dim": 2048, "qk_rms_norm": True, "qk_rms_norm_cross": False,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "resolution": 16, "sample_size": 96, "selfattn_block": "self_rowwise", "share_mod": False,
    "sparse_mv_attention": True, "time_cond_proj_dim": None, "time_embedding_act_fn": None,
    "time_embedding_dim": None, "time_embedding_type": "positional", "timestep_post_act": None,
    "transformer_layers_per_block": 1, "trellis_in_channels": 8, "trellis_out_channels": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D"],
    "upcast_attention": True, "update_after_step": 0, "use_checkpoint": False, "use_dino": False,
    "use_ema_warmup": False, "use_fp16": False, "use_linear_projection": True,
}

#: SD-2.1 VAE (``OneStage/vae``).
VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 768, "scaling_factor": 0.18215,
}

#: OpenCLIP ViT-H/14 vision tower with the 1024-d projection (``OneStage/image_encoder``).
IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "num_channels": 3, "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu",
    "layer_norm_eps": 1e-05, "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
}

#: ``OneStage/feature_extractor/preprocessor_config.json`` (CLIPImageProcessor at 224).
FEATURE_EXTRACTOR_CONFIG: dict[str, Any] = {
    "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 224},
}

#: TRELLIS ``ss_dec_conv3d_16l8_fp16`` (``OneStage/sparse_structure_decoder``).
SS_DECODER_CONFIG: dict[str, Any] = {
    "name": "SparseStructureDecoder",
    "args": {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
             "channels": [512, 128, 32], "use_fp16": True},
}

_SWIN_DECODER_ARGS: dict[str, Any] = {
    "resolution": 64, "model_channels": 768, "latent_channels": LATENT_CHANNELS, "num_blocks": 12,
    "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
    "mv_condition_mode": "4_view", "use_multiscale": True, "use_faceinfo": False,
}
#: ``SecondStage/ckpts/*/config.json`` of the release.
SLAT_FLOW_CONFIG: dict[str, Any] = {
    "name": "SLatFlowModel",
    "args": {"resolution": 64, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
             "model_channels": 1024, "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4,
             "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [128], "pe_mode": "ape",
             "qk_rms_norm": True, "use_fp16": True},
}
DECODER_GS_CONFIG: dict[str, Any] = {
    "name": "SLatGaussianDecoder",
    "args": {**_SWIN_DECODER_ARGS, "representation_config": GAUSSIAN_REPRESENTATION},
}
DECODER_MESH_CONFIG: dict[str, Any] = {
    "name": "SLatMeshDecoder", "args": {**_SWIN_DECODER_ARGS, "representation_config": {"use_color": True}},
}

PROMPT_TOKENS = 77
PROMPT_VIEWS = 7
PARTS = ("dinov2", "stage1", "stage2")
#: Fraction of the 64^3 grid the random sparse-structure decoder marks occupied (a person: ~21k voxels, 8 %).
SS_OCCUPANCY = 0.08
#: The SS decoder's last parameter: the bias of the 32 -> 1 logit conv.
SS_LAST_BIAS = "out_layer.2.bias"


@torch.no_grad()
def calibrate_ss_occupancy_(model: nn.Module, device: torch.device, fraction: float = SS_OCCUPANCY) -> None:
    """Shift the SS decoder's last bias so about ``fraction`` of the logits of a N(0, 1) latent are > 0.

    Random weights otherwise mark ~50 % of the grid (131k voxels), far beyond a person (~21k), which would
    make every stage-2 measurement meaningless. The last conv's input is group-normed, so the fraction
    hardly depends on the latent's scale.
    """
    latent = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator(device=device).manual_seed(0),
                         device=device)
    logits = model(latent).float().flatten()
    bias = dict(model.named_parameters())[SS_LAST_BIAS]
    bias.sub_(torch.quantile(logits, 1.0 - fraction).to(bias.dtype))


@dataclass(frozen=True)
class RandomModel:
    """One model folder to write: where, its config, the weights file name and format."""

    folder: Path
    config: dict[str, Any]
    weights_name: str = WEIGHTS_NAME
    pickle: bool = False
    keep_fp32: bool = False
    adjust: Callable[[nn.Module, torch.device], None] | None = None


def models_of(layout: CheckpointLayout, part: str) -> list[RandomModel]:
    """The full-size model folders of one part (``dinov2``, ``stage1`` or ``stage2``) of the tree."""
    if part == "dinov2":
        return [RandomModel(layout.dinov2, REAL_DINOV2_CONFIG, layout.dinov2_weights.name, pickle=True,
                            keep_fp32=True)]
    if part == "stage1":
        return [
            RandomModel(layout.diffusion_2d3d, DIFFUSION_2D3D_CONFIG, DIFFUSERS_WEIGHTS),
            RandomModel(layout.vae, VAE_CONFIG, DIFFUSERS_WEIGHTS),
            RandomModel(layout.image_encoder, IMAGE_ENCODER_CONFIG),
            RandomModel(layout.ss_decoder, SS_DECODER_CONFIG, adjust=calibrate_ss_occupancy_),
        ]
    if part == "stage2":
        return [
            RandomModel(layout.slat_flow, SLAT_FLOW_CONFIG),
            RandomModel(layout.decoder_gs, DECODER_GS_CONFIG),
            RandomModel(layout.decoder_mesh, DECODER_MESH_CONFIG),
        ]
    raise ValueError(f"unknown part {part!r}; use {list(PARTS)}")


@torch.no_grad()
def write_random_model(spec: RandomModel, seed: int, device: torch.device, dtype: torch.dtype) -> int:
    """Build ``spec``'s model on ``device``, randomise it, write config + weights; returns the bytes written.

    Floating-point parameters are stored in ``dtype`` (fp32 when ``spec.keep_fp32``); buffers as built.
    """
    write_json(spec.folder / CONFIG_NAME, spec.config)
    _, model = build_meta_model(spec.folder, device=device)
    randomize_(model, seed, device)
    if spec.adjust is not None:
        spec.adjust(model, device)
    params = {name for name, _ in model.named_parameters()}
    store = torch.float32 if spec.keep_fp32 else dtype
    tensors = {
        key: (value.to(store) if key in params and value.is_floating_point() else value)
        .detach().to("cpu").contiguous().clone()
        for key, value in model.state_dict().items()
    }
    del model
    path = spec.folder / spec.weights_name
    if spec.pickle:
        torch.save(tensors, path)
    else:
        save_file(tensors, str(path))
    return path.stat().st_size


def _write_stage1_extras(layout: CheckpointLayout, seed: int, dtype: torch.dtype) -> None:
    """Feature-extractor config, fixed prompt embeddings ``[7, 77, 1024]``, ``pipeline_config.json``."""
    write_json(layout.feature_extractor_config, FEATURE_EXTRACTOR_CONFIG)
    generator = torch.Generator().manual_seed(seed)
    layout.prompt_embeds_dir.mkdir(parents=True, exist_ok=True)
    width = int(DIFFUSION_2D3D_CONFIG["cross_attention_dim"])
    for path in (layout.normal_prompt_embeds, layout.color_prompt_embeds):
        embeds = torch.randn(PROMPT_VIEWS, PROMPT_TOKENS, width, generator=generator).to(dtype)
        torch.save(embeds, path)
    subdirs = {
        "unet": layout.diffusion_2d3d.name, "vae": layout.vae.name,
        "image_encoder": layout.image_encoder.name,
        "feature_extractor": layout.feature_extractor_config.parent.name,
        "sparse_structure_decoder": layout.ss_decoder.name,
    }
    metadata = {k: {"subdir": v} for k, v in subdirs.items()}
    write_json(layout.stage1_pipeline_config, {"name": "SyncHumanOneStagePipeline", "metadata": metadata})


def write_random_tree(
    root: Path,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    parts: tuple[str, ...] = PARTS,
    models: Callable[[CheckpointLayout, str], list[RandomModel]] = models_of,
    say: Callable[[str], None] = print,
) -> int:
    """Write the full-size random tree (or ``parts`` of it) below ``root``; returns the bytes written.

    ``models`` maps (layout, part) to the model folders (tests pass smaller configs through the same code).
    The segmenter is not written (preprocess needs none for RGBA inputs); copy ``u2netp.onnx`` separately.
    """
    layout = CheckpointLayout(Path(root))
    device = torch.device(device)
    total = 0
    for offset, part in enumerate(parts):
        for index, spec in enumerate(models(layout, part)):
            started = time.monotonic()
            size = write_random_model(spec, seed + 10 * offset + index, device, dtype)
            total += size
            say(f"{layout.root.name}/{spec.folder.relative_to(layout.root)}: {size / 1e9:.2f} GB "
                f"in {time.monotonic() - started:.1f} s")
        if part == "stage1":
            _write_stage1_extras(layout, seed, dtype)
        if part == "stage2":
            mean = [0.0] * LATENT_CHANNELS
            std = [1.0] * LATENT_CHANNELS
            write_json(layout.stage2_pipeline, pipeline_config(mean, std))
    (layout.root / TINY_MARKER).unlink(missing_ok=True)
    (layout.root / "RANDOM_WEIGHTS.txt").write_text(RANDOM_NOTICE)
    (layout.root / RANDOM_MARKER).write_text(
        json.dumps({"dtype": str(dtype).removeprefix("torch."), "seed": seed, "parts": list(parts)}) + "\n"
    )
    return total

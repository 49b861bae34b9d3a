"""Where every checkpoint file lives under the checkpoint root (``ckpts/`` by default).

The layout mirrors the upstream release (``OneStage/...``, ``SecondStage/...``) plus four folders of ours:
``dinov2/`` (the torch-hub ViT-L/14-reg4 weights and a ``config.json`` describing them),
``segmentation/`` (the ONNX person segmenter), ``pose/`` (the BlazePose ``.tflite`` files of the rig step) and
``OneStage/fixed_prompt_embeds_7view/`` (the fixed CLIP-text prompt embeddings upstream reads from its working
directory). Everything else reads paths from
:class:`CheckpointLayout` instead of spelling them out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Environment variable naming the checkpoint root (default ``<repo>/ckpts``).
ROOT_ENV = "SYNCHUMAN_CKPTS"

DINOV2_WEIGHTS_NAME = "dinov2_vitl14_reg4_pretrain.pth"
SEGMENTER_NAME = "u2netp.onnx"
PROMPT_EMBEDS_NAMES = ("normal_embeds.pt", "clr_embeds.pt")
#: Upstream config value naming DINOv2 by its torch-hub id, and the local path it is resolved to (relative to
#: ``SecondStage/``).
DINOV2_HUB_ID = "dinov2_vitl14_reg"
DINOV2_LOCAL_REF = "../dinov2"

#: Weight file names tried in order for a model folder (TRELLIS, transformers and diffusers conventions:
#: single file, fp16 variant, sharded index, legacy pickle).
WEIGHT_CANDIDATES = (
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
)


def default_root() -> Path:
    """``$SYNCHUMAN_CKPTS`` if set, else ``<repo>/ckpts``."""
    return Path(os.environ.get(ROOT_ENV, REPO_ROOT / "ckpts"))


def weights_file(folder: Path) -> Path | None:
    """The weights file of a model folder (first of :data:`WEIGHT_CANDIDATES` that exists), or ``None``."""
    for name in WEIGHT_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass(frozen=True)
class CheckpointLayout:
    """Every path of the checkpoint tree below ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # Stage 1 (upstream ``ckpts/OneStage``).
    @property
    def stage1(self) -> Path:
        return self.root / "OneStage"

    @property
    def stage1_pipeline_config(self) -> Path:
        return self.stage1 / "pipeline_config.json"

    @property
    def diffusion_2d3d(self) -> Path:
        return self.stage1 / "SyncHuman_2D3DCrossSpaceDiffusion"

    @property
    def vae(self) -> Path:
        return self.stage1 / "vae"

    @property
    def image_encoder(self) -> Path:
        return self.stage1 / "image_encoder"

    @property
    def text_encoder(self) -> Path:
        return self.stage1 / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        """CLIP tokenizer files; with :attr:`text_encoder`, lets the fixed prompt embeddings be computed."""
        return self.stage1 / "tokenizer"

    @property
    def feature_extractor_config(self) -> Path:
        return self.stage1 / "feature_extractor" / "preprocessor_config.json"

    @property
    def ss_decoder(self) -> Path:
        return self.stage1 / "sparse_structure_decoder"

    @property
    def prompt_embeds_dir(self) -> Path:
        return self.stage1 / "fixed_prompt_embeds_7view"

    @property
    def normal_prompt_embeds(self) -> Path:
        return self.prompt_embeds_dir / PROMPT_EMBEDS_NAMES[0]

    @property
    def color_prompt_embeds(self) -> Path:
        return self.prompt_embeds_dir / PROMPT_EMBEDS_NAMES[1]

    # Stage 2 (upstream ``ckpts/SecondStage``).
    @property
    def stage2(self) -> Path:
        return self.root / "SecondStage"

    @property
    def stage2_pipeline(self) -> Path:
        return self.stage2 / "pipeline.json"

    @property
    def slat_flow(self) -> Path:
        return self.stage2 / "ckpts" / "slat_flow"

    @property
    def decoder_gs(self) -> Path:
        return self.stage2 / "ckpts" / "decoder_GS"

    @property
    def decoder_mesh(self) -> Path:
        return self.stage2 / "ckpts" / "decoder_Mesh"

    # Ours.
    @property
    def dinov2(self) -> Path:
        return self.root / "dinov2"

    @property
    def dinov2_weights(self) -> Path:
        return self.dinov2 / DINOV2_WEIGHTS_NAME

    @property
    def segmentation(self) -> Path:
        return self.root / "segmentation"

    @property
    def segmenter(self) -> Path:
        return self.segmentation / SEGMENTER_NAME

    @property
    def pose(self) -> Path:
        """The pose landmark model's folder (``scripts/fetch_pose_model.py``; the rig step reads it)."""
        return self.root / "pose"

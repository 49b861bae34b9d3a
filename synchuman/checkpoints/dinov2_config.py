"""The ``ckpts/dinov2/config.json`` we write next to the torch-hub weights (the hub file has no config).

The real file describes hub ``dinov2_vitl14_reg`` (ViT-L/14 with 4 registers); tiny checkpoints use the same
structure (patch 14, native 518 input, 24 blocks so stage 2 can take layers 4, 11, 17, 23) with a small width.
"""

from __future__ import annotations

from typing import Any

#: Config name of the DINOv2 model class (:data:`synchuman.models.registry.MODEL_MODULES`).
DINOV2_CLASS = "DinoVisionTransformer"


def dinov2_config(embed_dim: int = 1024, depth: int = 24, num_heads: int = 16) -> dict[str, Any]:
    """``{"name", "args"}`` of a DINOv2 ViT/14 with 4 registers; defaults are the real ViT-L/14-reg4."""
    return {
        "name": DINOV2_CLASS,
        "args": {
            "img_size": 518,
            "patch_size": 14,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": 4,
            "num_register_tokens": 4,
            "init_values": 1.0,
            "interpolate_antialias": True,
            "interpolate_offset": 0.0,
        },
    }


REAL_DINOV2_CONFIG = dinov2_config()
TINY_DINOV2_CONFIG = dinov2_config(embed_dim=16, depth=24, num_heads=1)

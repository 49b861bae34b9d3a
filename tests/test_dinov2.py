"""DINOv2 ViT/14-reg against the upstream parity fixture (tiny, random weights); the encoder's shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional

from synchuman.models.dinov2 import DinoV2Encoder, DinoVisionTransformer

KWARGS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "num_register_tokens",
    "init_values",
    "interpolate_antialias",
    "interpolate_offset",
)
ATOL = 2e-5  # the fixture README's suggested acceptance for an independent fp32 implementation


@pytest.fixture(scope="module")
def fixture(parity_dir):
    folder = parity_dir / "stage1" / "dinov2"
    config = json.loads((folder / "config.json").read_text())
    model = DinoVisionTransformer(**{k: config[k] for k in KWARGS})
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval(), load_file(folder / "io.safetensors"), json.loads((folder / "meta.json").read_text())


@pytest.mark.parametrize("size", [56, 112, 70])
def test_matches_upstream(fixture, size):
    model, io, meta = fixture
    x = io[f"in.image_{size}"]
    with torch.no_grad():
        out = model(x, is_training=True)
        prenorm = out["x_prenorm"]
        checks = {
            "x_prenorm": prenorm,
            "cond_layernorm": functional.layer_norm(prenorm, prenorm.shape[-1:]),
            "x_norm_clstoken": out["x_norm_clstoken"],
            "x_norm_patchtokens": out["x_norm_patchtokens"],
            "pos_embed_interp": model.interpolate_pos_encoding(
                torch.zeros(1, 1 + (size // 14) ** 2, model.embed_dim), size, size
            ),
        }
        layers = model.get_intermediate_layers(x, [0, 1, 3])
    for i, layer in zip((0, 1, 3), layers, strict=True):
        checks[f"intermediate_{size}_block{i}"] = layer
    checks[f"intermediate_{size}_concat"] = torch.cat(layers, dim=-1)
    for name, ours in checks.items():
        key = f"out.{name}" if name.startswith("intermediate") else f"out.{name}_{size}"
        reference = io[key]
        assert ours.shape == reference.shape, name
        err = (ours - reference).abs().max().item()
        assert err <= ATOL, f"{name} at {size}: max abs error {err:.2e}"


def test_encoder_shapes_and_normalisation():
    torch.manual_seed(0)
    model = DinoVisionTransformer(embed_dim=32, depth=24, num_heads=2).eval()
    encoder = DinoV2Encoder(model)
    crop = np.random.default_rng(0).integers(0, 256, (518, 518, 3), dtype=np.uint8)
    cond = encoder.condition(crop)
    assert cond.shape == (1, 1 + 4 + 37 * 37, 32)
    assert torch.allclose(cond.mean(-1), torch.zeros(1), atol=1e-4)  # layer-normed without affine
    views = [np.full((768, 768, 3), v, np.uint8) for v in (0, 64, 128, 255)]
    features = encoder.multiview_features(views)
    assert features.shape == (1, 4, 64, 64, 4 * 32)
    # view order is kept: each view's features equal those of the view encoded alone
    single = encoder.multiview_features(views[2:3])
    assert torch.allclose(features[:, 2], single[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="518"):
        encoder.condition(crop[:500])

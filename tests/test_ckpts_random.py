"""make-random: full-size random checkpoints (written here with small stage-2 configs, same code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from synchuman.checkpoints import full_size
from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.shapes import build_meta_model, model_shapes
from synchuman.checkpoints.tiny_stage2 import GAUSSIAN_REPRESENTATION, decoder_config, flow_config
from synchuman.checkpoints.verify import verify_tree


def _small_models(layout: CheckpointLayout, part: str) -> list[full_size.RandomModel]:
    assert part == "stage2"
    gs = decoder_config("SLatGaussianDecoder", 32, representation_config=GAUSSIAN_REPRESENTATION)
    mesh = decoder_config("SLatMeshDecoder", 32, representation_config={"use_color": True},
                          subdivide_num_groups=8)
    return [
        full_size.RandomModel(layout.slat_flow, flow_config(32)),
        full_size.RandomModel(layout.decoder_gs, gs),
        full_size.RandomModel(layout.decoder_mesh, mesh),
    ]


def test_random_tree_verifies_and_stores_the_dtype(tmp_path: Path) -> None:
    lines: list[str] = []
    total = full_size.write_random_tree(tmp_path, torch.float16, "cpu", seed=3, parts=("stage2",),
                                        models=_small_models, say=lines.append)
    assert total > 0 and len(lines) == 3
    errors = [f for f in verify_tree(tmp_path, ("stage2",)) if f.fatal]
    assert errors == []
    layout = CheckpointLayout(tmp_path)
    with safe_open(str(layout.slat_flow / "model.safetensors"), "pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert {t.dtype for t in weights.values()} == {torch.float16}
    matrices = [t.float() for t in weights.values() if t.ndim >= 2]
    assert all(torch.isfinite(t).all() for t in matrices)
    assert max(float(t.std()) for t in matrices) < 1.0  # 1/sqrt(fan_in) scaling, not unit noise
    assert json.loads((tmp_path / "RANDOM_WEIGHTS.json").read_text())["dtype"] == "float16"


def test_unknown_part_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown part"):
        full_size.write_random_tree(tmp_path, parts=("stage3",), say=lambda s: None)


@pytest.mark.parametrize(
    ("component", "config"),
    [("slat_flow", full_size.SLAT_FLOW_CONFIG), ("decoder_GS", full_size.DECODER_GS_CONFIG),
     ("decoder_Mesh", full_size.DECODER_MESH_CONFIG)],
)
def test_full_stage2_configs_match_upstream_manifest(parity_dir: Path, tmp_path: Path, component: str,
                                                     config: dict) -> None:
    manifest = json.loads((parity_dir / "stage2" / f"{component}.manifest.json").read_text())
    assert config == manifest["config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    _, model = build_meta_model(tmp_path)
    assert model_shapes(model) == {k: tuple(v["shape"]) for k, v in manifest["keys"].items()}


class _TinySSDecoder(torch.nn.Module):
    """Test double with the SS decoder's interface: latent [B, 8, 16^3] -> logits [B, 1, 64^3]."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = torch.nn.Conv3d(8, 32, 3, padding=1)
        self.up = torch.nn.Upsample(scale_factor=4)
        self.out_layer = torch.nn.Sequential(torch.nn.GroupNorm(8, 32), torch.nn.SiLU(),
                                             torch.nn.Conv3d(32, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.up(self.input_layer(x)))


def test_ss_occupancy_is_calibrated_for_latents_of_any_scale() -> None:
    model = full_size.randomize_(_TinySSDecoder(), seed=1)
    full_size.calibrate_ss_occupancy_(model, torch.device("cpu"), fraction=0.08)
    with torch.no_grad():
        for scale in (1.0, 5.0):
            latent = scale * torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(7))
            occupied = float((model(latent) > 0).float().mean())
            assert 0.04 < occupied < 0.16, (scale, occupied)

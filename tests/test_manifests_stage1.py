"""Full-size stage-1 models built on the meta device match the upstream key/shape manifests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from synchuman.checkpoints.dinov2_config import REAL_DINOV2_CONFIG
from synchuman.checkpoints.full_size import DIFFUSION_2D3D_CONFIG, SS_DECODER_CONFIG
from synchuman.models.cross_space import SyncHuman_2D3DCrossSpaceDiffusion
from synchuman.models.dinov2 import DinoVisionTransformer
from synchuman.models.ss_decoder import SparseStructureDecoder


def _diffusion() -> nn.Module:
    return SyncHuman_2D3DCrossSpaceDiffusion(
        **{k: v for k, v in DIFFUSION_2D3D_CONFIG.items() if not k.startswith("_")}
    )


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "manifest_SyncHuman_2D3DCrossSpaceDiffusion.json": _diffusion,
    "manifest_sparse_structure_decoder.json": lambda: SparseStructureDecoder(**SS_DECODER_CONFIG["args"]),
    "manifest_dinov2_vitl14_reg.json": lambda: DinoVisionTransformer(**REAL_DINOV2_CONFIG["args"]),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_full_size_model_matches_manifest(parity_dir: Path, name: str) -> None:
    path = parity_dir / "stage1" / "manifests" / name
    if not path.is_file():
        pytest.fail(f"manifest {path} missing")
    manifest = json.loads(path.read_text())
    with torch.device("meta"):
        model = BUILDERS[name]()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sorted(set(expected) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(expected)) == []  # unexpected
    assert {k: ours[k] for k in expected if ours[k] != expected[k]} == {}
    assert len(ours) == manifest["num_keys"]
    assert {n for n, _ in model.named_buffers() if n in ours} == set(manifest["buffers_in_state_dict"])
    assert sum(p.numel() for p in model.parameters()) == manifest["total_param_count"]

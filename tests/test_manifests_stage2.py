"""Full-size stage-2 models built on the meta device match the upstream manifests key for key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synchuman.models.slat_decoders import SLatGaussianDecoder, SLatMeshDecoder
from synchuman.models.slat_flow import SLatFlowModel

MODELS = {
    "slat_flow": SLatFlowModel,
    "decoder_GS": SLatGaussianDecoder,
    "decoder_Mesh": SLatMeshDecoder,
}


@pytest.mark.parametrize("component", sorted(MODELS))
def test_full_size_model_matches_manifest(parity_dir: Path, component: str) -> None:
    path = parity_dir / "stage2" / f"{component}.manifest.json"
    if not path.is_file():
        pytest.fail(f"manifest {path} missing")
    manifest = json.loads(path.read_text())
    with torch.device("meta"):
        model = MODELS[component](**manifest["config"]["args"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sorted(set(expected) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(expected)) == []  # unexpected
    assert {k: ours[k] for k in expected if ours[k] != expected[k]} == {}
    assert len(ours) == manifest["num_keys"]
    buffers = {k for k, v in manifest["keys"].items() if v.get("buffer")}
    assert {name for name, _ in model.named_buffers()} == buffers
    params = sum(p.numel() for p in model.parameters())
    assert params == manifest["total_parameters"]

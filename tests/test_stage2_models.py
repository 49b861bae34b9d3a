"""Stage-2 model unit: strict loading from the SecondStage layout, sampling with progress/stop, decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from synchuman.checkpoints.loading import CheckpointError
from synchuman.models.flexicubes import Mesh
from synchuman.models.gaussians import Gaussians
from synchuman.models.slat_decoders import SLatGaussianDecoder, SLatMeshDecoder
from synchuman.models.slat_flow import SLatFlowModel
from synchuman.pipelines.stage2_models import load_stage2_models
from synchuman.samplers.flow_euler import SamplingCancelled

DECODER = dict(
    resolution=16,
    model_channels=32,
    latent_channels=8,
    num_blocks=2,
    num_heads=2,
    window_size=8,
    mv_dim=2,
    use_multiscale=True,
    block_mv_dim=2,
)
CONFIGS = {
    "slat_flow": (
        SLatFlowModel,
        dict(
            resolution=16,
            in_channels=8,
            out_channels=8,
            model_channels=32,
            cond_channels=16,
            num_blocks=1,
            num_heads=2,
            io_block_channels=[16],
            qk_rms_norm=True,
        ),
    ),
    "decoder_GS": (
        SLatGaussianDecoder,
        dict(
            DECODER,
            representation_config={
                "lr": {"_rotation": 0.1},
                "perturb_offset": True,
                "voxel_size": 1.5,
                "num_gaussians": 4,
                "3d_filter_kernel_size": 9e-4,
                "scaling_bias": 4e-3,
                "opacity_bias": 0.1,
                "scaling_activation": "softplus",
            },
        ),
    ),
    "decoder_Mesh": (
        SLatMeshDecoder,
        dict(DECODER, subdivide_num_groups=4, representation_config={"use_color": True}),
    ),
}


@pytest.fixture(scope="module")
def second_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("SecondStage")
    torch.manual_seed(0)
    for name, (cls, args) in CONFIGS.items():
        folder = root / "ckpts" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"name": cls.__name__, "args": args}))
        save_file(
            {k: v.contiguous() for k, v in cls(**args).state_dict().items()}, folder / "model.safetensors"
        )
    pipeline = {
        "name": "SyncHumanTwoStagePipeline",
        "args": {
            "models": {
                "slat_flow_model": "ckpts/slat_flow",
                "slat_decoder_gs": "ckpts/decoder_GS",
                "slat_decoder_mesh": "ckpts/decoder_Mesh",
            },
            "slat_sampler": {
                "name": "FlowEulerGuidanceIntervalSampler",
                "args": {"sigma_min": 1e-5},
                "params": {"steps": 3, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0},
            },
            "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8},
        },
    }
    (root / "pipeline.json").write_text(json.dumps(pipeline))
    return root


def _voxels() -> torch.Tensor:
    g = torch.stack(torch.meshgrid(*[torch.arange(4, 12)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return g[((g.float() - 7.5).norm(dim=1) - 3).abs() < 1.0]


def test_sample_and_decode(second_stage: Path) -> None:
    models = load_stage2_models(second_stage / "ckpts")  # the ckpts folder or SecondStage itself
    assert models.resolution == 16 and models.latent_channels == 8 and models.sampler_params.steps == 3
    coords = _voxels()
    steps: list[tuple[int, int]] = []
    latent = models.sample_latent(
        coords, torch.randn(1, 5, 16), seed=1, callback=lambda i, n: steps.append((i, n))
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert latent.feats.shape == (coords.shape[0], 8) and torch.isfinite(latent.feats).all()
    again = models.sample_latent(coords, torch.randn(1, 5, 16), seed=1)
    assert not torch.equal(again.feats, latent.feats)  # the condition matters
    mv = torch.randn(1, 4, 64, 64, 8)
    gaussians, mesh = models.decode(latent, mv, mv)
    assert isinstance(gaussians, Gaussians) and len(gaussians) == coords.shape[0] * 4
    assert torch.allclose(gaussians.quats.norm(dim=1), torch.ones(len(gaussians)), atol=1e-5)
    assert isinstance(mesh, Mesh) and mesh.vertex_attrs is not None
    assert mesh.vertex_attrs.shape == (mesh.vertices.shape[0], 6)


def test_stop_between_steps(second_stage: Path) -> None:
    models = load_stage2_models(second_stage)
    calls = iter([False, True])
    with pytest.raises(SamplingCancelled, match="before step 2"):
        models.sample_latent(_voxels(), torch.randn(1, 5, 16), should_stop=lambda: next(calls))


def test_bad_checkpoint_is_one_clear_error(second_stage: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "SecondStage"
    shutil.copytree(second_stage, broken)
    config = json.loads((broken / "ckpts" / "decoder_GS" / "config.json").read_text())
    config["args"]["num_blocks"] = 3
    (broken / "ckpts" / "decoder_GS" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): blocks\.2\."):
        load_stage2_models(broken)
    with pytest.raises(CheckpointError, match="no pipeline.json"):
        load_stage2_models(tmp_path / "nowhere")

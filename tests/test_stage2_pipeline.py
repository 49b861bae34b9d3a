"""Stage2Pipeline glue on CPU: tiny random stage-2 checkpoints, the real sampler/decoders/post-processing.

DINOv2 is replaced by a deterministic test double of the same shapes here (the real encoder is covered by its
own tests and by the end-to-end tests), so these tests pin the glue: option plumbing, progress order, stop
checks, extra outputs, the output report.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
from synchuman.options import Stage2Options
from synchuman.pipelines.handoff import Stage2InputError, Stage2Inputs
from synchuman.pipelines.info import PipelineInfo
from synchuman.pipelines.stage2 import Stage2Pipeline
from synchuman.pipelines.stage2_models import load_stage2_models
from synchuman.pipelines.stage2_types import Stage2Cancelled

WIDTH = 32  # tiny DINOv2 width the tiny stage-2 models are conditioned on


class FakeDinoV2:
    """Deterministic stand-in: tokens / feature maps derived from the image statistics."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def condition(self, crop: np.ndarray) -> torch.Tensor:
        self.calls.append("condition")
        assert crop.shape == (518, 518, 3) and crop.dtype == np.uint8
        g = torch.Generator().manual_seed(int(crop.mean()))
        return torch.randn(1, 1 + 4 + 37 * 37, WIDTH, generator=g)

    def multiview_features(self, views) -> torch.Tensor:
        self.calls.append(f"multiview:{len(views)}")
        assert all(v.shape == (768, 768, 3) for v in views)
        g = torch.Generator().manual_seed(int(sum(v.mean() for v in views)))
        return torch.randn(1, len(views), 64, 64, 4 * WIDTH, generator=g)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Stage2Pipeline:
    root = tmp_path_factory.mktemp("ckpts")
    write_tiny_stage2(root, seed=0, dinov2_dim=WIDTH)
    models = load_stage2_models(CheckpointLayout(root))
    return Stage2Pipeline(
        models, FakeDinoV2(), PipelineInfo(str(root), "tiny", "cpu", "float32"), render_views=0
    )


def person_inputs() -> Stage2Inputs:
    grid = np.stack(np.meshgrid(*[np.arange(20, 44)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = grid[np.linalg.norm((grid - 31.5) * [1.0, 1.0, 0.5], axis=1) < 6]
    rng = np.random.default_rng(0)
    views = [np.full((768, 768, 3), 255, np.uint8) for _ in range(10)]
    for v in views:
        v[100:700, 250:520] = rng.integers(0, 200, 3, dtype=np.uint8)
    return Stage2Inputs(
        coords=coords,
        colors=tuple(views[:5]),
        normals=tuple(views[5:]),
        conditioning=rng.integers(0, 256, (518, 518, 3), dtype=np.uint8),
    )


SMALL = Stage2Options(steps=3, texture_size=256, bake_steps=5, visibility_views=8, simplify_ratio=0.95)


def test_reconstruct_makes_a_loadable_glb_with_ordered_progress_and_extras(pipeline):
    import trimesh

    events: list[tuple[str, int, int]] = []
    options = Stage2Options(**{**SMALL.__dict__, "outputs": ("gaussians.ply", "mesh_obj.zip")})
    result = pipeline.run(person_inputs(), options, lambda *e: events.append(e), lambda: False)
    scene = trimesh.load(io.BytesIO(result.glb), file_type="glb", force="scene")
    faces = sum(len(g.faces) for g in scene.geometry.values())
    assert faces == result.report.face_count > 0
    assert result.report.glb_size_bytes == len(result.glb)
    assert 0.0 < result.report.texture_coverage <= 1.0
    assert events[:5] == [
        ("condition", 0, 0), ("sampling", 0, 3), ("sampling", 1, 3), ("sampling", 2, 3), ("sampling", 3, 3)
    ]
    phases = [e[0] for e in events[4:] if e[1] == e[2] == 0]  # phase starts; steps follow some of them
    assert phases[:2] == ["multiview_features", "decode"]
    assert phases[2:] == ["decimate", "visibility", "cut_fill", "uv_atlas", "bake", "export"]
    assert [e for e in events if e[0] == "bake" and e[1]][-1] == ("bake", 5, 5)
    assert sorted(result.extra_files) == ["gaussians.ply", "mesh_obj.zip"]
    assert result.extra_files["gaussians.ply"].startswith(b"ply\n")
    names = zipfile.ZipFile(io.BytesIO(result.extra_files["mesh_obj.zip"])).namelist()
    assert any(n.endswith(".obj") for n in names) and any(n.endswith(".mtl") for n in names)
    assert {"sampling", "decode", "bake", "export"} <= set(result.phase_seconds)
    assert pipeline.dinov2.calls[-2:] == ["multiview:4", "multiview:4"]


def test_should_stop_between_sampler_steps_raises_cancelled(pipeline):
    events: list = []
    with pytest.raises(Stage2Cancelled):
        pipeline.run(
            person_inputs(), Stage2Options(steps=50), lambda *e: events.append(e), lambda: len(events) >= 3
        )
    assert events == [("condition", 0, 0), ("sampling", 0, 50), ("sampling", 1, 50)]


def test_should_stop_during_postprocessing_raises_cancelled(pipeline):
    events: list = []
    with pytest.raises(Stage2Cancelled):
        pipeline.run(
            person_inputs(),
            SMALL,
            lambda *e: events.append(e),
            lambda: any(e[0] == "visibility" for e in events),
        )
    assert events[-1][0] == "visibility"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda i: Stage2Inputs(np.zeros((0, 3), int), i.colors, i.normals, i.conditioning), "coords"),
        (lambda i: Stage2Inputs(i.coords + 60, i.colors, i.normals, i.conditioning), "coords"),
        (lambda i: Stage2Inputs(i.coords, i.colors[:4], i.normals, i.conditioning), "colors"),
        (lambda i: Stage2Inputs(i.coords, i.colors, i.normals, i.conditioning[:500]), "conditioning"),
    ],
)
def test_bad_inputs_name_the_field(pipeline, change, field):
    with pytest.raises(Stage2InputError) as err:
        pipeline.run(change(person_inputs()), SMALL, lambda *e: None, lambda: False)
    assert err.value.field == field


def test_out_of_range_options_name_the_option(pipeline):
    with pytest.raises(Stage2InputError) as err:
        pipeline.run(person_inputs(), Stage2Options(texture_size=64), lambda *e: None, lambda: False)
    assert err.value.field == "options.texture_size"


def test_warm_up_runs_the_models_once(pipeline, monkeypatch):
    """Models once each, and the Gaussian renderer requests use (so gsplat's CUDA build happens before
    SERVING and a broken renderer fails the start-up)."""
    import synchuman.pipelines.stage2 as stage2_module

    rendered = []
    real = stage2_module.gaussian_bake_views

    def recording(gaussians, options):
        views, backend, rgb = real(gaussians, options)
        rendered.append((options.gaussian_backend, backend, tuple(rgb.shape)))
        return views, backend, rgb

    monkeypatch.setattr(stage2_module, "gaussian_bake_views", recording)
    calls = len(pipeline.dinov2.calls)
    pipeline.warm_up()
    assert pipeline.dinov2.calls[calls:] == ["condition", "multiview:4"]
    assert rendered == [("auto", "torch", (1, 16, 16, 3))]  # CPU: the torch renderer; CUDA: gsplat


def test_warm_up_fails_when_the_renderer_cannot_work(pipeline, monkeypatch):
    import synchuman.pipelines.stage2 as stage2_module

    def broken(gaussians, options):
        raise PermissionError("cannot write the gsplat build directory")

    monkeypatch.setattr(stage2_module, "gaussian_bake_views", broken)
    with pytest.raises(PermissionError, match="gsplat"):
        pipeline.warm_up()


def test_a_speck_of_voxels_is_rejected_as_a_useless_output(pipeline):
    from synchuman.pipelines.stage2_types import Stage2OutputRejected

    tiny = person_inputs()
    tiny = Stage2Inputs(np.array([[31, 31, 31]]), tiny.colors, tiny.normals, tiny.conditioning)
    with pytest.raises(Stage2OutputRejected) as err:
        pipeline.run(tiny, SMALL, lambda *e: None, lambda: False)
    assert err.value.code in ("TINY_MESH", "EMPTY_MESH")


def test_served_over_grpc(pipeline):
    """The real pipeline behind Stage2Service: GLB streamed back, report filled in, progress per step."""
    import grpc
    from stage_doubles import collect_blobs, png, stage2_requests, start_server

    from services.common.stage_io import voxels_to_proto
    from services.common.stage_runtime import StageLimits
    from services.stage2.backend import Stage2PipelineBackend
    from synchuman.v1 import common_pb2, stage2_pb2_grpc

    server = start_server("stage2", Stage2PipelineBackend(pipeline), StageLimits())
    try:
        inputs = person_inputs()
        blobs = {"conditioning.png": png(inputs.conditioning)}
        for kind, views in (("color", inputs.colors), ("normal", inputs.normals)):
            blobs.update({f"{kind}_{i}.png": png(v) for i, v in enumerate(views)})
        options = common_pb2.ReconstructionOptions(
            steps=2, texture_size=256, bake_steps=5, visibility_views=8, simplify_ratio=0.95
        )
        stub = stage2_pb2_grpc.Stage2ServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        responses = list(
            stub.Reconstruct(stage2_requests(blobs, voxels_to_proto(inputs.coords, 64), options))
        )
        glb = collect_blobs(responses)["person.glb"]
        result = responses[-1].result
        assert result.report.glb_size_bytes == len(glb) and result.report.face_count > 0
        steps = [r.progress.step for r in responses if r.progress.phase == "sampling"]
        assert steps == [0, 1, 2]
    finally:
        server.stop()

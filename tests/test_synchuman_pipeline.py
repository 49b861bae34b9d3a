"""The in-process photo -> GLB pipeline on tiny random checkpoints (CPU): result contents, a valid GLB,
progress order, seeding, and the typed errors of bad input."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synchuman import SyncHumanPipeline
from synchuman.options import OptionError, Stage1Options, Stage2Options
from synchuman.preprocess.errors import QualityGateError

pytestmark = pytest.mark.slow

#: Small sampler and bake settings: the tiny random models only prove the plumbing.
STAGE1 = Stage1Options(steps=2)
STAGE2 = Stage2Options(steps=2, texture_size=256, bake_steps=5, visibility_views=8, simplify_ratio=0.95)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, segmenter_dir: Path) -> SyncHumanPipeline:
    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.tiny import write_tiny_tree

    root = tmp_path_factory.mktemp("inprocess") / "ckpts"
    layout = CheckpointLayout(root)
    layout.segmentation.mkdir(parents=True)
    shutil.copyfile(segmenter_dir / "u2netp.onnx", layout.segmenter)
    write_tiny_tree(root)
    return SyncHumanPipeline.from_pretrained(root, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def photo(images_dir: Path) -> Image.Image:
    image = Image.open(sorted(images_dir.glob("person_*.png"))[0])
    image.thumbnail((512, 512))
    return image


def test_photo_to_glb_with_views_voxels_geometry_and_progress(
    pipe: SyncHumanPipeline, photo: Image.Image, tmp_path: Path
) -> None:
    import trimesh

    seen = []
    result = pipe(
        photo,
        generator=torch.Generator().manual_seed(0),
        callback=seen.append,
        stage1_options=STAGE1,
        stage2_options=STAGE2,
    )
    assert result.input_report.mask_coverage > 0 and not result.input_report.errors
    for views in (result.colors, result.normals):
        assert views.shape == (5, 768, 768, 3) and views.dtype == np.uint8
    assert result.voxels.ndim == 2 and result.voxels.shape[1] == 3 and len(result.voxels) > 0
    assert result.voxels.min() >= 0 and result.voxels.max() < 64
    assert result.mesh is not None and result.mesh.vertices.shape[0] > 0
    assert result.gaussians is not None
    path = result.save_glb(tmp_path / "person.glb")
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert (magic, version, length) == (b"glTF", 2, len(data))
    scene = trimesh.load(path, file_type="glb", force="scene")
    faces = sum(len(g.faces) for g in scene.geometry.values())
    assert faces > 0 and faces == result.stage2.report.face_count
    stages = [p.stage for p in seen]
    assert stages == sorted(stages, key=["preprocess", "multiview", "reconstruction"].index)
    assert [p.step for p in seen if p.stage == "multiview"] == [1, 2]
    assert [p.step for p in seen if p.stage == "reconstruction" and p.phase == "sampling"] == [0, 1, 2]


def test_same_seed_same_result_from_bytes_or_image(pipe: SyncHumanPipeline, photo: Image.Image) -> None:
    """A generator's seed, not its state, decides the result; file bytes and the opened image agree."""
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    advanced = torch.Generator().manual_seed(3)
    torch.rand(5, generator=advanced)
    runs = [
        pipe(source, generator=generator, stage1_options=STAGE1, stage2_options=STAGE2)
        for source, generator in ((photo, torch.Generator().manual_seed(3)), (buffer.getvalue(), advanced))
    ]
    assert np.array_equal(runs[0].voxels, runs[1].voxels)
    assert np.array_equal(runs[0].colors, runs[1].colors)
    assert runs[0].stage2.report.vertex_count == runs[1].stage2.report.vertex_count


def test_photo_without_a_person_raises_the_quality_gate(pipe: SyncHumanPipeline) -> None:
    blank = Image.new("RGB", (256, 256), (128, 128, 128))
    with pytest.raises(QualityGateError) as err:
        pipe(blank, stage1_options=STAGE1, stage2_options=STAGE2)
    assert err.value.code == "EMPTY_MASK" and err.value.report.errors


def test_out_of_range_options_name_the_option(pipe: SyncHumanPipeline, photo: Image.Image) -> None:
    with pytest.raises(OptionError) as err:
        pipe(photo, stage1_options=Stage1Options(steps=0))
    assert err.value.field == "steps"
    with pytest.raises(OptionError) as err:
        pipe(photo, stage2_options=Stage2Options(texture_size=64))
    assert err.value.field == "texture_size"


def test_unset_stage2_options_take_the_devices_defaults(segmenter_dir: Path, photo: Image.Image) -> None:
    """Without stage-2 options the pipeline uses its stage-2 pipeline's device defaults (the small CPU ones on
    a CPU, as the stage-2 service does), not upstream's 1000 views at 1024^2."""
    from synchuman.options import PreprocessOptions
    from synchuman.pipelines.handoff import Stage1Output
    from synchuman.pipelines.stage2_types import CPU_DEFAULTS

    class Stage1Double:  # returns blank views at once
        def run(self, framed, conditioning, options, callback, should_stop):
            views = np.full((5, 768, 768, 3), 255, np.uint8)
            return Stage1Output(views, views, np.zeros((1, 3), np.int64))

    class Stage2Double:  # records the options it was given, then stops the call
        defaults = CPU_DEFAULTS
        received: list[Stage2Options] = []

        def run(self, inputs, options, progress, should_stop, keep_geometry=False):
            self.received.append(options)
            raise RuntimeError("recorded")

    stage2 = Stage2Double()
    options = PreprocessOptions(segmentation_dir=segmenter_dir)
    pipe = SyncHumanPipeline(Stage1Double(), stage2, options)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="recorded"):
        pipe(photo, stage1_options=STAGE1)
    with pytest.raises(RuntimeError, match="recorded"):
        pipe(photo, stage1_options=STAGE1, stage2_options=STAGE2)
    unset, given = ((o.visibility_views, o.texture_size) for o in stage2.received)
    assert unset == (CPU_DEFAULTS.visibility_views, CPU_DEFAULTS.texture_size)
    assert given == (STAGE2.visibility_views, STAGE2.texture_size)
    assert CPU_DEFAULTS.visibility_views < Stage2Options().visibility_views

"""The core's shared contracts: option ranges (defined once), the stage hand-off types, the stage-1 sampler
and the model registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synchuman.models.registry import MODEL_MODULES, model_class
from synchuman.options import MAX_SEED, OptionError, PreprocessOptions, Stage1Options, Stage2Options
from synchuman.pipelines.handoff import (
    VIEW_FILES,
    Stage1Output,
    Stage2InputError,
    stage2_inputs_from,
)
from synchuman.samplers.flow_euler import SamplingCancelled
from synchuman.samplers.flow_euler_cfg import FlowEulerCfgSampler


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (Stage1Options(steps=0), "steps"),
        (Stage1Options(steps=201), "steps"),
        (Stage1Options(guidance_scale=0.5), "guidance_scale"),
        (Stage1Options(seed=MAX_SEED + 1), "seed"),
        (Stage1Options(seed=-1), "seed"),
        (Stage2Options(texture_size=64), "texture_size"),
        (Stage2Options(simplify_ratio=1.0), "simplify_ratio"),
        (Stage2Options(bake_steps=5001), "bake_steps"),
        (Stage2Options(visibility_views=4), "visibility_views"),
        (Stage2Options(bake_mode="slow"), "bake_mode"),
        (Stage2Options(outputs=("mesh.usdz",)), "outputs"),
        (PreprocessOptions(max_pixels=10), "max_pixels"),
        (PreprocessOptions(max_bytes=0), "max_bytes"),
    ],
)
def test_out_of_range_options_name_the_field(options, field) -> None:
    with pytest.raises(OptionError) as err:
        options.validate()
    assert err.value.field == field and isinstance(err.value, ValueError)
    assert err.value.within("start.options").field == f"start.options.{field}"
    assert err.value.within("start.options").message == err.value.message


def test_defaults_validate_and_bake_steps_resolve() -> None:
    assert Stage1Options().validate() == Stage1Options(seed=43, steps=50, guidance_scale=3.0)
    assert Stage2Options().validate().bake_steps == 100
    assert Stage2Options(bake_mode="opt").validate().bake_steps == 1000
    assert PreprocessOptions().validate() == PreprocessOptions()
    assert Stage1Options(seed=MAX_SEED, steps=200, guidance_scale=20).validate().steps == 200


def _stage1_output(coords: np.ndarray) -> Stage1Output:
    views = np.arange(10 * 768 * 768 * 3, dtype=np.uint32).astype(np.uint8).reshape(10, 768, 768, 3)
    return Stage1Output(colors=views[:5], normals=views[5:], coords=coords)


def test_view_files_round_trip() -> None:
    output = _stage1_output(np.array([[1, 2, 3]]))
    files = output.view_files()
    assert tuple(files) == VIEW_FILES
    back = Stage1Output.from_view_files(files, output.coords)
    assert np.array_equal(back.colors, output.colors) and np.array_equal(back.normals, output.normals)
    del files["normal_4.png"]
    with pytest.raises(Stage2InputError, match="normal_4.png"):
        Stage1Output.from_view_files(files, output.coords)


def test_stage2_inputs_sort_the_voxels_like_the_wire_and_validate() -> None:
    coords = np.array([[3, 0, 0], [1, 2, 0], [1, 0, 5], [1, 0, 2]], dtype=np.int32)
    inputs = stage2_inputs_from(_stage1_output(coords), np.zeros((518, 518, 3), np.uint8))
    assert inputs.coords.tolist() == [[1, 0, 2], [1, 0, 5], [1, 2, 0], [3, 0, 0]]
    assert inputs.validate(64) is inputs
    with pytest.raises(Stage2InputError) as err:
        stage2_inputs_from(_stage1_output(coords), np.zeros((500, 518, 3), np.uint8)).validate(64)
    assert err.value.field == "conditioning"


def test_cfg_sampler_integrates_the_guided_velocity() -> None:
    """Constant velocities u (uncond) and c (cond): the result is x - (u + w (c - u)) over t from 1 to 0."""
    x, y = torch.ones(2, 3), torch.zeros(1, 4)
    steps = []

    def velocity(a: torch.Tensor, b: torch.Tensor, timestep: float):
        assert 0 < timestep <= 1000
        return (torch.full_like(a, 1.0), torch.full_like(a, 2.0)), (torch.zeros_like(b), torch.ones_like(b))

    a, b = FlowEulerCfgSampler(rescale_t=3.0).sample(
        velocity, (x, y), steps=4, cfg_strength=3.0, callback=lambda s, n: steps.append((s, n))
    )
    torch.testing.assert_close(a, x - 4.0)
    torch.testing.assert_close(b, y - 3.0)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(SamplingCancelled, match="before step 1"):
        FlowEulerCfgSampler().sample(velocity, (x, y), steps=2, should_stop=lambda: True)


def test_registry_names_resolve_to_their_classes() -> None:
    for name in MODEL_MODULES:
        cls = model_class(name)
        assert cls is not None and cls.__name__ == name and issubclass(cls, torch.nn.Module)
    assert model_class("AutoencoderKL") is None

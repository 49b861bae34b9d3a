"""Issue 21's options: the polygon budget (``target_faces``), the quad remesh and the new outputs, with every
bad input refused by an :class:`OptionError` naming its field."""

from __future__ import annotations

import pytest

from synchuman.options import (
    EXTRA_OUTPUTS,
    POSTPROCESS_EXTRAS,
    PREVIEW_FILES,
    RIGGED_GLB,
    OptionError,
    PostprocessOptions,
    Stage2Options,
)
from synchuman.postprocess.defaults import DEFAULT_SIMPLIFY


def test_defaults_keep_the_upstream_ratio_and_no_budget() -> None:
    options = Stage2Options().validate()
    assert options.simplify_ratio is None and options.target_faces is None and options.quad_remesh is False
    assert PostprocessOptions().decimation == DEFAULT_SIMPLIFY == 0.7
    assert PostprocessOptions(simplify=0.5).decimation == 0.5


def test_a_budget_alone_or_a_ratio_alone_is_accepted() -> None:
    assert Stage2Options(target_faces=20_000, quad_remesh=True).validate().target_faces == 20_000
    assert Stage2Options(simplify_ratio=0.5).validate().simplify_ratio == 0.5
    for edge in (5_000, 500_000):
        assert PostprocessOptions(target_faces=edge).validate().target_faces == edge


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        (Stage2Options(target_faces=4_999), "target_faces", "5,000 to 500,000"),
        (Stage2Options(target_faces=500_001), "target_faces", "5,000 to 500,000"),
        (Stage2Options(target_faces=20_000.5), "target_faces", "out of range"),
        (Stage2Options(target_faces=True), "target_faces", "out of range"),
        (Stage2Options(target_faces=20_000, simplify_ratio=0.7), "target_faces", "simplify_ratio"),
        (Stage2Options(simplify_ratio=1.0), "simplify_ratio", "0 to 0.99"),
        (Stage2Options(quad_remesh="yes"), "quad_remesh", "true or false"),
        (Stage2Options(outputs=("person.fbx",)), "outputs", "person.usdz"),
        (PostprocessOptions(target_faces=20_000, simplify=0.5), "target_faces", "simplify"),
        (PostprocessOptions(target_faces=100), "target_faces", "5,000"),
        (PostprocessOptions(quad_remesh=None), "quad_remesh", "true or false"),
        (PostprocessOptions(extras=("usd",)), "extras", "usdz"),
        (PostprocessOptions(preview_frames=12), "preview_frames", "24 to 360"),
    ],
)
def test_bad_inputs_name_their_field(options: object, field: str, words: str) -> None:
    with pytest.raises(OptionError) as caught:
        options.validate()
    assert caught.value.field == field
    assert words in caught.value.message


def test_every_extra_output_has_its_postprocessing_extra() -> None:
    """All but the rigged GLB, which stage 2's rig step makes after the post-processing."""
    assert set(POSTPROCESS_EXTRAS) == set(EXTRA_OUTPUTS) - {RIGGED_GLB}
    assert {"person.usdz", "preview.png", RIGGED_GLB} <= set(EXTRA_OUTPUTS)
    assert PREVIEW_FILES == ("preview.png", "turntable.mp4", "turntable.webp")
    outputs = tuple(POSTPROCESS_EXTRAS)
    extras = PostprocessOptions(extras=tuple(POSTPROCESS_EXTRAS[o] for o in outputs)).validate().extras
    assert set(extras) == {"gaussian_ply", "obj", "usdz", "preview"}

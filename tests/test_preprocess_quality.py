"""Quality gate: measurements and findings on hand-made masks, and the gate inside the pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from synchuman.options import PreprocessOptions
from synchuman.preprocess.errors import QualityGateError
from synchuman.preprocess.mask import clean_mask, refine_alpha
from synchuman.preprocess.pipeline import preprocess
from synchuman.preprocess.quality import assess


def codes(report) -> dict[str, str]:
    return {issue.code: issue.severity for issue in report.issues}


def blob_mask(height: int = 400, width: int = 300, boxes=((100, 50, 300, 250),), value: float = 1.0):
    """float mask with value inside each (top, left, bottom, right) box."""
    mask = np.zeros((height, width), np.float32)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = value
    return mask


def test_good_mask_has_no_findings() -> None:
    report = assess(blob_mask(), (600, 800), "segmenter:u2netp")
    assert report.issues == []
    assert report.mask_coverage == pytest.approx(200 * 200 / (400 * 300))
    assert report.bbox_fraction == pytest.approx(200 * 200 / (400 * 300))
    assert report.person_components == 1 and report.touched_edges == []
    assert report.mask_confidence == pytest.approx(1.0)
    assert report.to_dict()["mask_source"] == "segmenter:u2netp"


def test_empty_mask_is_an_error() -> None:
    report = assess(np.zeros((100, 80), np.float32), (800, 1000), "segmenter:u2netp")
    assert codes(report) == {"EMPTY_MASK": "error"} and report.errors
    assert "no person found" in report.errors[0].message


def test_near_empty_mask_is_an_error() -> None:
    report = assess(blob_mask(boxes=((10, 10, 18, 18),)), (300, 400), "alpha")  # 0.05 % of the image
    assert codes(report) == {"EMPTY_MASK": "error"}


def test_tiny_person_in_pixels_is_an_error_and_small_is_a_warning() -> None:
    # a healthy 17 % coverage, but the input is only 60 x 80 pixels: the person is 40 px tall
    assert "EMPTY_MASK" not in codes(assess(blob_mask(), (60, 80), "alpha"))
    assert codes(assess(blob_mask(), (30, 40), "alpha")) == {"EMPTY_MASK": "error"}
    assert codes(assess(blob_mask(), (300, 400), "alpha")) == {"SMALL_PERSON": "warning"}


def test_person_touching_the_border() -> None:
    mask = blob_mask(boxes=((100, 50, 400, 250),))
    report = assess(mask, (600, 800), "segmenter:u2netp")
    assert report.touched_edges == ["bottom"] and codes(report) == {"PERSON_CUT_OFF": "warning"}
    # a cut-out (alpha) is often cropped tight: informational only
    assert codes(assess(mask, (600, 800), "alpha")) == {"PERSON_CUT_OFF": "info"}


def test_several_people() -> None:
    mask = blob_mask(boxes=((100, 20, 300, 120), (100, 170, 300, 280), (10, 10, 14, 14)))
    report = assess(mask, (600, 800), "segmenter:u2netp")
    assert report.person_components == 2  # the 4x4 speck is not person-sized
    assert codes(report) == {"MULTIPLE_PEOPLE": "warning"}


def test_uncertain_mask() -> None:
    report = assess(blob_mask(value=0.6), (600, 800), "segmenter:u2netp")
    assert report.mask_confidence < 0.5
    assert codes(report) == {"LOW_MASK_CONFIDENCE": "warning"}


def test_mask_filling_the_image() -> None:
    report = assess(blob_mask(boxes=((0, 0, 400, 300),)), (600, 800), "segmenter:u2netp")
    assert codes(report)["MASK_FILLS_IMAGE"] == "warning"


def test_clean_mask_drops_specks_and_noise() -> None:
    prob = blob_mask(boxes=((100, 50, 300, 250), (5, 5, 9, 9)))
    prob[350:, :] = 0.004  # faint noise far from the person
    out = clean_mask(prob)
    assert out[7, 7] == 0 and out[390, 290] == 0 and out[200, 150] == 1.0
    assert not clean_mask(np.full((20, 20), 0.3, np.float32)).any()


def test_refine_alpha_follows_image_edge() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:, 50:] = (250, 240, 230)  # the true edge at x = 50
    rgb[:, 50] = (125, 120, 115)  # a half-covered pixel column
    prob = np.zeros((100, 100), np.float32)
    prob[:, 46:] = 1.0  # a mask that overshoots onto the background by 4 px
    out = refine_alpha(rgb, prob, band=6)
    assert out[50, 35] == 0 and out[50, 60] == 1  # outside the band: the trimap decides
    np.testing.assert_allclose(out[50, 44:50], 0.0, atol=0.01)  # the overshoot is removed
    assert abs(out[50, 50] - 0.5) < 0.02  # the mixed pixel gets a fractional alpha
    np.testing.assert_allclose(out[50, 51:58], 1.0, atol=0.01)


def png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_pipeline_refuses_an_empty_alpha_cutout() -> None:
    rgba = np.zeros((200, 160, 4), np.uint8)
    rgba[:, :, :3] = 90
    rgba[100:103, 80:83, 3] = 255  # a 3x3 "person"
    with pytest.raises(QualityGateError) as info:
        preprocess(png(rgba))
    assert info.value.code == "EMPTY_MASK" and info.value.report.mask_source == "alpha"


def test_pipeline_uses_alpha_cutout() -> None:
    rgba = np.zeros((600, 400, 4), np.uint8)
    rgba[50:550, 100:300] = (10, 120, 200, 255)
    result = preprocess(png(rgba))
    assert result.report.mask_source == "alpha" and result.report.errors == []
    assert result.framed.shape == (768, 768, 4) and result.conditioning.shape == (518, 518, 3)
    assert result.mask.shape == (600, 400) and (result.mask == rgba[:, :, 3]).all()
    assert set(result.timings) == {"decode", "mask", "frame"}


def test_pipeline_segments_a_photo_without_a_person(segmenter_dir) -> None:
    flat = np.full((300, 200, 4), 128, np.uint8)
    flat[:, :, 3] = 255
    with pytest.raises(QualityGateError) as info:
        preprocess(png(flat), PreprocessOptions(segmentation_dir=segmenter_dir))
    assert info.value.code == "EMPTY_MASK" and info.value.report.mask_source == "segmenter:u2netp"

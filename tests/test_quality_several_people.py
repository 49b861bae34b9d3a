"""Quality gate on two people touching (issue 17, finding 11): one mask region, still the MULTIPLE_PEOPLE
warning; every sample person alone stays warning-free. Test photos are composites of the RGBA cut-outs in
../shared/images (person_*.png), side by side with a slight overlap, as a cut-out (alpha path) and flattened
on a background (the u2netp segmenter path)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from synchuman.options import PreprocessOptions
from synchuman.preprocess.errors import QualityGateError
from synchuman.preprocess.pipeline import preprocess
from synchuman.preprocess.quality import QualityReport

PEOPLE = ("000", "001", "002", "004", "005")
#: pairs whose composite is one mask region (they touch)
TOUCHING_PAIRS = (("000", "001"), ("000", "002"), ("001", "002"))
BACKGROUND = (90, 110, 140, 255)
HEIGHT = 900  # each person's height in the composites, pixels


def person(images_dir: Path, name: str) -> Image.Image:
    """The cut-out of ``person_<name>.png`` cropped to its opaque box and scaled to :data:`HEIGHT`."""
    image = Image.open(images_dir / f"person_{name}.png").convert("RGBA")
    image = image.crop(image.getchannel("A").point(lambda v: 255 if v > 127 else 0).getbbox())
    return image.resize((round(image.width * HEIGHT / image.height), HEIGHT))


def side_by_side(left: Image.Image, right: Image.Image, overlap: float = 0.06) -> Image.Image:
    """A transparent canvas with ``right`` overlapping ``left`` by ``overlap`` of the narrower width."""
    shift = left.width - int(overlap * min(left.width, right.width))
    canvas = Image.new("RGBA", (shift + right.width + 200, HEIGHT + 200), (0, 0, 0, 0))
    canvas.alpha_composite(left, (100, 100))
    canvas.alpha_composite(right, (100 + shift, 100))
    return canvas


def on_background(cutout: Image.Image) -> Image.Image:
    flat = Image.new("RGBA", cutout.size, BACKGROUND)
    flat.alpha_composite(cutout)
    return flat.convert("RGB")


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def report_of(image: Image.Image, segmenter_dir: Path) -> QualityReport:
    try:
        return preprocess(encode(image), PreprocessOptions(segmentation_dir=segmenter_dir)).report
    except QualityGateError as error:
        return error.report


def warnings(report: QualityReport) -> list[str]:
    return [issue.code for issue in report.issues if issue.severity != "info"]


@pytest.mark.parametrize("name", PEOPLE)
def test_one_person_alone_has_no_warning(images_dir, segmenter_dir, name):
    cutout = Image.open(images_dir / f"person_{name}.png")
    alone = report_of(cutout, segmenter_dir)
    assert alone.mask_source == "alpha" and warnings(alone) == [] and alone.person_components == 1
    canvas = Image.new("RGBA", (cutout.width + 200, cutout.height + 200), (0, 0, 0, 0))
    canvas.alpha_composite(cutout.convert("RGBA"), (100, 100))
    photo = report_of(on_background(canvas), segmenter_dir)
    assert photo.mask_source == "segmenter:u2netp"
    assert warnings(photo) == [] and photo.person_components == 1, photo.summary()


@pytest.mark.parametrize("pair", TOUCHING_PAIRS, ids="+".join)
def test_two_people_touching_get_the_several_people_warning(images_dir, segmenter_dir, pair):
    cutout = side_by_side(person(images_dir, pair[0]), person(images_dir, pair[1]))
    regions, _ = cv2.connectedComponents((np.asarray(cutout.getchannel("A")) > 127).astype(np.uint8))
    assert regions - 1 == 1, "the two people must touch (one mask region)"
    for image in (cutout, on_background(cutout)):
        report = report_of(image, segmenter_dir)
        assert "MULTIPLE_PEOPLE" in warnings(report), report.summary()
        assert report.person_components == 2
        assert "side by side" in next(i.message for i in report.issues if i.code == "MULTIPLE_PEOPLE")

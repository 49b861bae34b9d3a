"""The preprocess stage: photo bytes -> framed 768x768 RGBA, 518x518 conditioning crop, person mask, report.

Used unchanged by the CLI (``synchuman preprocess``) and the gRPC service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from synchuman.options import PreprocessOptions
from synchuman.preprocess.decode import (
    DecodedImage,
    decode_image,
    decode_pil,
)
from synchuman.preprocess.errors import QualityGateError
from synchuman.preprocess.framing import conditioning_crop, frame_multiview
from synchuman.preprocess.mask import clean_mask, refine_alpha
from synchuman.preprocess.quality import QualityIssue, QualityReport, assess
from synchuman.preprocess.segment import DEFAULT_SEGMENTER, load_segmenter

#: Longer side of the copy used for segmentation and the quality measurements, in pixels.
ANALYSIS_SIDE = 1024
#: Longer side up to which alpha matting runs (larger inputs are matted at this size and upsampled).
MATTING_SIDE = 2048


@dataclass
class PreprocessResult:
    """``framed``: uint8 [768, 768, 4] stage-1 input; ``conditioning``: uint8 [518, 518, 3] DINOv2 input;
    ``mask``: uint8 [H, W] person mask at the input's (upright) resolution; ``report``: quality report;
    ``timings``: seconds per phase."""

    framed: np.ndarray
    conditioning: np.ndarray
    mask: np.ndarray
    report: QualityReport
    timings: dict[str, float] = field(default_factory=dict)


def _resize_long_side(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _resize_to(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` resized to ``shape[:2]`` (area averaging when shrinking, bilinear when growing)."""
    if values.shape[:2] == shape[:2]:
        return values
    interpolation = cv2.INTER_AREA if shape[0] < values.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(values, (shape[1], shape[0]), interpolation=interpolation)


def alpha_is_usable(alpha: np.ndarray | None) -> bool:
    """True when an alpha channel cuts something out: some pixel is not opaque and some is mostly opaque."""
    return alpha is not None and int(alpha.min()) < 255 and int(alpha.max()) > 127


def person_mask(
    image: DecodedImage, options: PreprocessOptions
) -> tuple[np.ndarray, np.ndarray, str, list[QualityIssue]]:
    """The person mask of a decoded image.

    Returns (uint8 [H, W] mask at full resolution, float32 [h, w] analysis copy in [0, 1] with h, w <=
    :data:`ANALYSIS_SIDE`, mask source for the report, informational findings).
    """
    notes: list[QualityIssue] = []
    if not options.ignore_alpha and alpha_is_usable(image.alpha):
        assert image.alpha is not None
        analysis = _resize_long_side(image.alpha, ANALYSIS_SIDE).astype(np.float32) / 255.0
        return image.alpha, analysis, "alpha", notes
    if image.alpha is not None and not options.ignore_alpha and int(image.alpha.min()) < 255:
        notes.append(QualityIssue("info", "ALPHA_IGNORED", "the alpha channel is (almost) fully transparent; "
                                  "it was ignored and the person segmented from the colours instead"))
    name = options.segmenter or DEFAULT_SEGMENTER
    segmenter = load_segmenter(name, options.segmentation_dir)
    small = _resize_long_side(image.rgb, ANALYSIS_SIDE)
    prob = clean_mask(segmenter.predict(small))
    detail = prob
    if options.alpha_matting and prob.any():
        guide = _resize_long_side(image.rgb, MATTING_SIDE)
        detail = refine_alpha(guide, _resize_to(prob, guide.shape))
        prob = _resize_to(detail, small.shape)
    mask = _resize_to(np.clip(detail * 255.0 + 0.5, 0, 255).astype(np.uint8), image.rgb.shape)
    return mask, prob, f"segmenter:{segmenter.name}", notes


def preprocess_decoded(
    image: DecodedImage,
    options: PreprocessOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> PreprocessResult:
    """Mask, quality gate and framing of an already decoded image (see :func:`preprocess`)."""
    options = options or PreprocessOptions()
    report_progress = progress or (lambda phase: None)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    report_progress("segment")
    mask, analysis, source, notes = person_mask(image, options)
    timings["mask"] = time.perf_counter() - start
    report = assess(analysis, image.size, source)
    report.issues[:0] = notes
    if report.errors:
        raise QualityGateError(report.errors[0].code, report.errors[0].message, report)
    report_progress("frame")
    start = time.perf_counter()
    rgba = np.dstack([image.rgb, mask])
    framed = frame_multiview(rgba)
    conditioning = conditioning_crop(rgba)
    timings["frame"] = time.perf_counter() - start
    return PreprocessResult(
        framed=framed, conditioning=conditioning, mask=mask, report=report, timings=timings
    )


def preprocess(
    photo: bytes | Image.Image,
    options: PreprocessOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> PreprocessResult:
    """Run the whole stage on the bytes of an uploaded photo (or a photo opened with Pillow).

    ``progress`` is called with the phase name ("decode", "segment", "frame") as each phase starts.
    Raises :class:`~synchuman.preprocess.errors.InvalidImageError` for bad bytes,
    :class:`~synchuman.preprocess.errors.SegmenterError` for a missing model and
    :class:`~synchuman.preprocess.errors.QualityGateError` (with the report) when no usable person is found.
    """
    options = (options or PreprocessOptions()).validate()
    if progress:
        progress("decode")
    start = time.perf_counter()
    if isinstance(photo, Image.Image):
        image = decode_pil(photo, max_pixels=options.max_pixels)
    else:
        image = decode_image(photo, max_pixels=options.max_pixels, max_bytes=options.max_bytes)
    decode_seconds = time.perf_counter() - start
    result = preprocess_decoded(image, options, progress)
    result.timings = {"decode": decode_seconds, **result.timings}
    return result

"""Input quality gate: measurements of the person mask and the findings they lead to.

An ERROR finding means the 3D result would be useless (upstream turns an almost empty mask into a ~5 KB GLB
instead of a ~3 MB one), so the request fails; WARNING findings travel with the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

#: Fraction of the image the person must cover at least (below: EMPTY_MASK error).
MIN_COVERAGE = 0.005
#: Fewest pixels of the person's longer bounding-box side, in input pixels (below: EMPTY_MASK error).
MIN_PERSON_PIXELS = 32
#: The person's longer side in input pixels below which the result gets blurry (SMALL_PERSON warning).
SMALL_PERSON_PIXELS = 384
#: A component counts as a person when its area is at least this fraction of the largest one.
PERSON_COMPONENT_FRACTION = 0.2
#: Side-by-side figures in one mask region (people touching): the mask's coverage of each column of the
#: person's box (fraction of the box height, smoothed over FIGURE_SMOOTH of the box width) is split into runs
#: at FIGURE_RUN_LEVEL of the tallest column (runs closer than FIGURE_MERGE_GAP of the box height are one
#: run); a run whose tallest column reaches FIGURE_PEAK of the tallest column is a standing figure (head to
#: feet). Legs, arms and sleeves cover less of the height and do not count.
FIGURE_SMOOTH = 0.03
FIGURE_RUN_LEVEL = 0.6
FIGURE_MERGE_GAP = 0.04
FIGURE_PEAK = 0.8
#: Fraction of an image edge the mask must cover to count as touching it (PERSON_CUT_OFF warning).
EDGE_TOUCH_FRACTION = 0.01
#: Mean decisiveness |2p - 1| inside the person's box below which the mask is unreliable.
MIN_CONFIDENCE = 0.75
#: Coverage above which the "mask" is probably the whole picture (MASK_FILLS_IMAGE warning).
MAX_COVERAGE = 0.9

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class QualityIssue:
    """One finding: ``severity`` in :data:`SEVERITIES`, a stable ``code`` and a message for a person."""

    severity: str
    code: str
    message: str


@dataclass
class QualityReport:
    """Measurements of the input and its mask (fractions of the input image's area, in [0, 1])."""

    width: int
    height: int
    mask_source: str
    mask_coverage: float = 0.0
    bbox_fraction: float = 0.0
    touched_edges: list[str] = field(default_factory=list)
    person_components: int = 0
    mask_confidence: float = 0.0
    issues: list[QualityIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[QualityIssue]:
        """The findings that fail the request."""
        return [issue for issue in self.issues if issue.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats rounded to 4 decimals)."""
        data = asdict(self)
        for key in ("mask_coverage", "bbox_fraction", "mask_confidence"):
            data[key] = round(float(data[key]), 4)
        return data

    def summary(self) -> str:
        """A few human-readable lines: the measurements, then one line per finding."""
        lines = [
            f"input {self.width}x{self.height}, mask from {self.mask_source}: "
            f"coverage {self.mask_coverage:.1%}, person box {self.bbox_fraction:.1%} of the image, "
            f"{self.person_components} person component(s), "
            f"confidence {self.mask_confidence:.2f}"
            + (f", touches {'/'.join(self.touched_edges)} edge" if self.touched_edges else "")
        ]
        lines += [f"{issue.severity.upper()} {issue.code}: {issue.message}" for issue in self.issues]
        return "\n".join(lines)


def _touched_edges(binary: np.ndarray) -> list[str]:
    edges = {"top": binary[0], "bottom": binary[-1], "left": binary[:, 0], "right": binary[:, -1]}
    return [name for name, line in edges.items() if line.mean() >= EDGE_TOUCH_FRACTION]


def side_by_side_figures(box: np.ndarray) -> int:
    """How many upright figures stand side by side in ``box`` (bool [h, w], the mask cropped to the person's
    bounding box); see :data:`FIGURE_PEAK`. Two people touching make one mask region but two figures."""
    height, width = box.shape
    window = max(1, round(FIGURE_SMOOTH * width))
    coverage = np.convolve(box.mean(axis=0), np.ones(window) / window, mode="same")
    tallest = float(coverage.max())
    if tallest <= 0.0:
        return 0
    inside = np.concatenate([[False], coverage >= FIGURE_RUN_LEVEL * tallest, [False]])
    edges = np.flatnonzero(np.diff(inside.astype(np.int8)))
    runs: list[list[int]] = []
    for start, end in zip(edges[0::2], edges[1::2], strict=True):
        if runs and start - runs[-1][1] < FIGURE_MERGE_GAP * height:
            runs[-1][1] = int(end)
        else:
            runs.append([int(start), int(end)])
    return sum(1 for start, end in runs if coverage[start:end].max() >= FIGURE_PEAK * tallest)


def assess(prob: np.ndarray, input_size: tuple[int, int], mask_source: str) -> QualityReport:
    """Measure a person mask and decide whether it is usable.

    prob: float32 [h, w] in [0, 1], the mask at any resolution with the input's aspect ratio (an analysis copy
    of at most ~1024 pixels is plenty). input_size: (width, height) of the input in pixels. mask_source:
    ``"alpha"`` or ``"segmenter:<name>"``. Returns the report; ``report.errors`` is non-empty when unusable.
    """
    width, height = input_size
    report = QualityReport(width=width, height=height, mask_source=mask_source)
    binary = prob > 0.5
    report.mask_coverage = float(binary.mean())
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.size == 0 or report.mask_coverage < MIN_COVERAGE:
        report.issues.append(QualityIssue(
            "error", "EMPTY_MASK",
            f"no person found: the mask covers only {report.mask_coverage:.2%} of the image. Use a photo "
            "where one person fills a good part of the frame against a distinct background, or upload a PNG "
            "whose alpha channel cuts the person out",
        ))
        return report
    keep = areas >= PERSON_COMPONENT_FRACTION * areas.max()
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    box = binary[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    report.person_components = max(int(keep.sum()), side_by_side_figures(box))
    box_w, box_h = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    report.bbox_fraction = float(box_w * box_h / binary.size)
    report.touched_edges = _touched_edges(binary)
    pad_y, pad_x = max(1, box_h // 20), max(1, box_w // 20)
    top, left = max(0, rows[0] - pad_y), max(0, cols[0] - pad_x)
    region = prob[top : rows[-1] + pad_y + 1, left : cols[-1] + pad_x + 1]
    report.mask_confidence = float(np.abs(2.0 * region - 1.0).mean())

    person_px = max(box_w * width / binary.shape[1], box_h * height / binary.shape[0])
    if person_px < MIN_PERSON_PIXELS:
        report.issues.append(QualityIssue(
            "error", "EMPTY_MASK",
            f"the person is only {person_px:.0f} pixels tall: crop the photo closer to the person or use a "
            "higher-resolution photo",
        ))
        return report
    if person_px < SMALL_PERSON_PIXELS:
        report.issues.append(QualityIssue(
            "warning", "SMALL_PERSON",
            f"the person is only {person_px:.0f} pixels tall; details will be blurry. A photo where the "
            f"person is at least {SMALL_PERSON_PIXELS} (ideally 768+) pixels tall works better",
        ))
    if report.touched_edges and mask_source == "alpha":
        report.issues.append(QualityIssue(
            "info", "PERSON_CUT_OFF",
            f"the cut-out touches the {', '.join(report.touched_edges)} edge; fine for a tight crop of the "
            "whole person, otherwise the missing parts will be invented",
        ))
    elif report.touched_edges:
        report.issues.append(QualityIssue(
            "warning", "PERSON_CUT_OFF",
            f"the person touches the {', '.join(report.touched_edges)} edge of the photo and is probably cut "
            "off there; the missing parts will be invented. Use a photo showing the whole person with some "
            "margin",
        ))
    if report.person_components > 1:
        report.issues.append(QualityIssue(
            "warning", "MULTIPLE_PEOPLE",
            f"found {report.person_components} people (separate person-sized regions, or figures standing "
            "side by side); all of them are reconstructed as one shape. Crop the photo to a single person",
        ))
    if report.mask_confidence < MIN_CONFIDENCE:
        report.issues.append(QualityIssue(
            "warning", "LOW_MASK_CONFIDENCE",
            f"the person mask is uncertain (confidence {report.mask_confidence:.2f} < {MIN_CONFIDENCE}); the "
            "background may leak into the model. Use a plainer background or a PNG with the person cut out",
        ))
    if report.mask_coverage > MAX_COVERAGE:
        report.issues.append(QualityIssue(
            "warning", "MASK_FILLS_IMAGE",
            f"the mask covers {report.mask_coverage:.0%} of the image: the background was probably not "
            "separated. Use a photo with visible background around the person",
        ))
    return report

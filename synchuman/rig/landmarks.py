"""The geometry of BlazePose's two steps, in plain numpy: the person detector's SSD anchors, decoding its raw
boxes and keypoints, weighted non-maximum suppression, and the rotated square region (ROI) the landmark model
looks at.

Conventions: image pixel coordinates, x right, y down, origin at the top-left corner of the image (continuous:
pixel ``i`` covers ``[i, i + 1)``). The parameters are those of MediaPipe's published pose detection graph
(``mediapipe/modules/pose_detection``, Apache-2.0): a 224 x 224 input, 5 anchor layers with strides 8, 16, 32,
32, 32 and two unit anchors per cell and layer, 12 values per anchor (box centre x, y, width, height, then 4
keypoints x, y) scaled by the input size; keypoint 0 is the hip centre, keypoint 1 marks the body's size and
up-direction; IoU 0.3 suppression; the ROI is a square of side 2 * |kp1 - kp0| * 1.25 centred on the hips and
turned so that kp0 -> kp1 points up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DETECTOR_INPUT = 224
ANCHOR_STRIDES = (8, 16, 32, 32, 32)
ANCHORS_PER_LAYER = 2
DETECTOR_KEYPOINTS = 4
#: Minimum detector score (after the sigmoid) of a person and the IoU above which boxes are merged.
MIN_DETECTION_SCORE = 0.5
NMS_IOU = 0.3
ROI_SCALE = 1.25
_SCORE_CLIP = 100.0


@dataclass(frozen=True)
class Detection:
    """One person found by the detector, in the image's pixel coordinates.

    ``box``: (4,) float ``[x_min, y_min, x_max, y_max]``; ``keypoints``: (4, 2) float ``[x, y]`` (hip centre,
    body-size point, shoulder centre, upper-body-size point); ``score``: detector confidence 0..1.
    """

    box: np.ndarray
    keypoints: np.ndarray
    score: float


@dataclass(frozen=True)
class Roi:
    """A rotated square region of the image: ``centre`` (2,) px, ``size`` side in px, ``angle`` radians
    (0 = upright; see :meth:`to_image` for the axes)."""

    centre: np.ndarray
    size: float
    angle: float

    def to_image(self, crop_size: int) -> np.ndarray:
        """(2, 3) affine matrix taking crop pixel coordinates (0..crop_size) to image pixel coordinates."""
        scale = self.size / crop_size
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x_axis = np.array([cos, -sin]) * scale
        y_axis = np.array([sin, cos]) * scale
        origin = self.centre - (x_axis + y_axis) * crop_size / 2
        return np.stack([x_axis, y_axis, origin], axis=1)


@lru_cache(maxsize=1)
def ssd_anchors() -> np.ndarray:
    """(2254, 2) float32 anchor centres, normalised 0..1, in the detector's output order (unit size)."""
    centres = []
    for stride in sorted(set(ANCHOR_STRIDES)):
        per_cell = ANCHORS_PER_LAYER * ANCHOR_STRIDES.count(stride)
        cells = int(np.ceil(DETECTOR_INPUT / stride))
        steps = (np.arange(cells) + 0.5) / cells
        ys, xs = np.meshgrid(steps, steps, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode the detector's outputs for one image.

    ``raw_boxes``: (N, 12) float; ``raw_scores``: (N,) float logits. Returns (N, 6, 2) points normalised to
    the detector input (box centre, box size, 4 keypoints) and (N,) scores 0..1.
    """
    anchors = ssd_anchors()
    points = raw_boxes.reshape(-1, 2 + DETECTOR_KEYPOINTS, 2) / DETECTOR_INPUT
    decoded = points.copy()
    decoded[:, 0] += anchors
    decoded[:, 2:] += anchors[:, None, :]
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -_SCORE_CLIP, _SCORE_CLIP)))
    return decoded, scores


def _corners(decoded: np.ndarray) -> np.ndarray:
    half = decoded[:, 1] / 2
    return np.concatenate([decoded[:, 0] - half, decoded[:, 0] + half], axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def best_detection(decoded: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Weighted NMS keeping the best cluster only: the top-scoring candidate and every candidate overlapping
    it by more than :data:`NMS_IOU` are averaged, weighted by score. Returns (box corners (4,), keypoints
    (4, 2), score) normalised to the detector input, or None when no score reaches
    :data:`MIN_DETECTION_SCORE`.
    """
    keep = scores >= MIN_DETECTION_SCORE
    if not keep.any():
        return None
    decoded, scores = decoded[keep], scores[keep]
    corners = _corners(decoded)
    top = int(np.argmax(scores))
    cluster = _iou(corners[top], corners) > NMS_IOU
    weights = scores[cluster] / scores[cluster].sum()
    box = (corners[cluster] * weights[:, None]).sum(axis=0)
    keypoints = (decoded[cluster, 2:] * weights[:, None, None]).sum(axis=0)
    return box, keypoints, float(scores[top])


def roi_from_detection(detection: Detection) -> Roi:
    """The landmark model's ROI: centred on the hip centre, side 2 * ROI_SCALE * |kp1 - kp0|, turned so that
    the hip-centre -> body-size-point direction points up in the crop."""
    hip, top = detection.keypoints[0], detection.keypoints[1]
    up = top - hip
    # The crop's up axis in the image is (-sin, -cos) (see Roi.to_image): it must point along ``up``.
    angle = float(np.arctan2(-up[0], -up[1]))
    return Roi(centre=hip.astype(np.float64), size=float(2 * ROI_SCALE * np.hypot(*up)), angle=angle)


def refine_with_heatmap(
    points: np.ndarray, heatmap: np.ndarray, crop_size: int, kernel: int = 7, min_confidence: float = 0.5
) -> np.ndarray:
    """Landmark positions refined by the landmark model's heatmap, as MediaPipe's pose graph does.

    ``points``: (N, 2) crop px; ``heatmap``: (h, w, >= N) logits over the same crop. For each point, the
    sigmoid of its channel in the ``kernel`` x ``kernel`` cells around it is taken; when its maximum reaches
    ``min_confidence`` the point moves to the confidence-weighted centre of those cells. Returns (N, 2).
    """
    refined = points.astype(np.float64).copy()
    cells = heatmap.shape[0]
    cell_px = crop_size / cells
    half = kernel // 2
    for index, (x, y) in enumerate(points):
        col, row = int(x / cell_px), int(y / cell_px)
        rows = slice(max(0, row - half), min(cells, row + half + 1))
        cols = slice(max(0, col - half), min(cells, col + half + 1))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        confidence = 1.0 / (1.0 + np.exp(-heatmap[rows, cols, index].astype(np.float64)))
        if confidence.max() < min_confidence:
            continue
        ys, xs = np.mgrid[rows, cols]
        total = confidence.sum()
        refined[index] = [(confidence * (xs + 0.5)).sum() / total, (confidence * (ys + 0.5)).sum() / total]
        refined[index] *= cell_px
    return refined

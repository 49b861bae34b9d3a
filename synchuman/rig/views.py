"""The cameras of the views landmarks are found on, as affine maps from the model frame to image coordinates.

Frames: the *model frame* is the post-processing's (z up, person in the ``[-0.5, 0.5]`` box, facing -y, the
person's left at +x); the GLB stores it y-up (:data:`synchuman.postprocess.export.Z_UP_TO_Y_UP`). Stage 1's
four body views are orthographic cameras at the azimuths :data:`~synchuman.postprocess.pipeline.VIEW_YAWS`
(pitch 0, radius 2, built with :func:`synchuman.geometry.camera.orbit_extrinsics`) seeing the ``[-0.5, 0.5]``
box, exactly those the texture bake uses (:func:`~synchuman.postprocess.pipeline.generated_bake_views`); the
generated images of views :data:`~synchuman.postprocess.pipeline.MIRRORED_VIEWS` (back, left) are stored
mirrored left-right, so a pixel x on them is ``W - x`` on the camera's image. The framed input photo
("photo") is seen by the front camera. Image coordinates ``(u, v)`` are in ``[0, 1]`` (u right, v down):
``u = x_px / width``, ``v = y_px / height``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synchuman.geometry import camera
from synchuman.pipelines.handoff import VIEW_NAMES
from synchuman.postprocess.pipeline import MIRRORED_VIEWS, VIEW_YAWS

#: View names a landmark set may come from: stage 1's four body views and the framed input photo.
BODY_VIEWS = (*VIEW_NAMES[:4], "photo")


@dataclass(frozen=True)
class ViewCamera:
    """One orthographic view as an affine map: ``uv = matrix @ p + offset`` for model-frame points ``p``.

    Attributes:
        name: one of :data:`BODY_VIEWS`.
        matrix: ``[2, 3]`` float64; offset: ``[2]`` float64 (mirroring already applied).
        mirrored: True when the stored image is the camera's image flipped left-right.
    """

    name: str
    matrix: np.ndarray
    offset: np.ndarray
    mirrored: bool

    def project(self, points: np.ndarray) -> np.ndarray:
        """Image coordinates ``[N, 2]`` (0..1) of model-frame points ``[N, 3]``."""
        return np.asarray(points, dtype=np.float64) @ self.matrix.T + self.offset


def view_camera(name: str) -> ViewCamera:
    """The camera of view ``name`` (one of :data:`BODY_VIEWS`); ValueError for another name."""
    if name not in BODY_VIEWS:
        raise ValueError(f"unknown view {name!r}; landmarks must come from one of {', '.join(BODY_VIEWS)}")
    index = 0 if name == "photo" else VIEW_NAMES.index(name)
    extrinsics = camera.orbit_extrinsics(torch.tensor([VIEW_YAWS[index]]), torch.zeros(1), 2.0)[0]
    intrinsics = camera.orthographic_intrinsics(-0.5, 0.5, -0.5, 0.5)
    rot, trans = extrinsics[:3, :3].double().numpy(), extrinsics[:3, 3].double().numpy()
    k = intrinsics.double().numpy()
    matrix = k[:2, :2] @ rot[:2]
    offset = k[:2, :2] @ trans[:2] + k[:2, 2]
    mirrored = name != "photo" and index in MIRRORED_VIEWS
    if mirrored:
        matrix, offset = matrix * np.array([[-1.0], [1.0]]), np.array([1.0 - offset[0], offset[1]])
    return ViewCamera(name, matrix, offset, mirrored)

"""The rig step's pose model (BlazePose on LiteRT, ``synchuman.rig.pose_model``) on the real photos of
``../shared/images``: it finds the person on each, and every landmark it reports as visible (visibility
>= 0.5) lies inside the person's ground-truth mask (the photo's alpha >= 128) dilated by 10 px. The photos are
scaled to 512 px on their longer side first (quicker; 10 px is 2 % of that side: the model puts finger tips
and heels on the silhouette's edge). The same on the photos framed as stage 2's front view sees them (768 px,
15 px). Landmarks placed outside the image are reported invisible by the model wrapper (on person_000 the
model puts the squatting man's toes below the frame). A blank image holds no person."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, require_tool
from PIL import Image

from synchuman.rig.pose_files import POSE_DIR_ENV, POSE_MODELS
from synchuman.rig.pose_model import NUM_LANDMARKS, PoseModelError, load_pose_model

LONG_SIDE_PX = 512
MASK_TOLERANCE_PX = 10
FRAMED_TOLERANCE_PX = 15
MIN_VISIBILITY = 0.5


@pytest.fixture(scope="module")
def pose_model():
    folder = Path(os.environ.get(POSE_DIR_ENV, REPO_ROOT / "ckpts" / "pose"))
    for model in POSE_MODELS:
        require_tool(folder / model.name, f"pose model {model.name} (scripts/fetch_pose_model.py)")
    return load_pose_model(folder)


def _photos(images_dir: Path) -> list[Path]:
    photos = sorted(images_dir.glob("person_*.png"))
    assert photos, f"no person_*.png in {images_dir}"
    return photos


def _scaled_rgba(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGBA")
    image.thumbnail((LONG_SIDE_PX, LONG_SIDE_PX), Image.LANCZOS)
    return np.asarray(image)


def _assert_inside_the_person(name: str, rgba: np.ndarray, pose_model, tolerance_px: int) -> None:
    """The person is found on ``rgba``; every visible landmark lies in its alpha mask + ``tolerance_px``."""
    result = pose_model.find(rgba)
    assert result is not None, f"{name}: no person found"
    landmarks = result.landmarks
    assert landmarks.shape == (NUM_LANDMARKS, 3) and landmarks.dtype == np.float32
    visible = landmarks[:, 2] >= MIN_VISIBILITY
    assert visible.sum() >= 20, f"{name}: only {visible.sum()} visible landmarks"
    mask = (rgba[..., 3] >= 128).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance_px + 1,) * 2)
    allowed = cv2.dilate(mask, kernel) > 0
    xy = landmarks[visible, :2]
    on_image = (xy >= 0).all(axis=1) & (xy[:, 0] < mask.shape[1]) & (xy[:, 1] < mask.shape[0])
    assert on_image.all(), f"{name}: visible landmarks off the image: {xy[~on_image]}"
    inside = allowed[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    outside = np.flatnonzero(visible)[~inside].tolist()
    assert inside.all(), f"{name}: landmarks {outside} outside the mask (+{tolerance_px} px)"


def test_landmarks_on_real_photos_lie_inside_the_person(pose_model, images_dir: Path) -> None:
    for path in _photos(images_dir):
        _assert_inside_the_person(path.name, _scaled_rgba(path), pose_model, MASK_TOLERANCE_PX)


def test_landmarks_on_the_framed_photos_lie_inside_the_person(pose_model, images_dir: Path) -> None:
    """The photo as stage 2's front view shows it: framed by the preprocessing (768 x 768, the person
    centred), composited over white by the pose model as stage 1 composites it; tolerance 15 px (2 %)."""
    from synchuman.preprocess.pipeline import preprocess

    for path in _photos(images_dir):
        framed = preprocess(Image.open(path)).framed
        _assert_inside_the_person(f"framed {path.name}", framed, pose_model, FRAMED_TOLERANCE_PX)


def test_blank_image_has_no_person(pose_model) -> None:
    assert pose_model.find(np.full((384, 512, 3), 255, dtype=np.uint8)) is None
    assert pose_model.landmarks(np.zeros((256, 256, 4), dtype=np.uint8)) is None


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PoseModelError, match="fetch_pose_model.py"):
        load_pose_model(tmp_path)

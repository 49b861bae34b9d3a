"""Rigging a generated person: :func:`rig_glb` turns the plain ``person.glb`` and the body landmarks of the
views into a skinned GLB with a humanoid skeleton and a sample animation.

Steps (each a phase between which ``should_stop`` is checked): read the GLB's mesh -> triangulate the
landmarks with the views' cameras (:mod:`.views`, :mod:`.joints`) -> place the 19 joints (VRM humanoid names,
:mod:`.skeleton`) on the medial axis -> bone-heat skin weights (:mod:`.weights`) -> write the skin, joint
nodes and the idle animation into the GLB (:mod:`.skin_gltf`, :mod:`.animation`). A pose that cannot be
rigged (no person, too few visible landmarks, views that disagree, a joint outside the mesh, a GLB that is not
one triangle mesh) gives a :class:`RigResult` with the reason instead of a GLB; nothing is raised for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from synchuman.pipelines.stage2_types import Stage2Cancelled
from synchuman.postprocess.export import Z_UP_TO_Y_UP
from synchuman.rig import animation, joints, skeleton, skin_gltf, weights
from synchuman.rig.views import BODY_VIEWS, view_camera

log = logging.getLogger(__name__)

#: A view counts (a person is on it) when at least this many of its landmarks are visible; a side view
#: sees about half of the body's.
MIN_VIEW_LANDMARKS = 8


@dataclass(frozen=True)
class ViewLandmarks:
    """The body landmarks found on one view.

    Attributes:
        view: ``"front"``, ``"right"``, ``"back"``, ``"left"`` (stage 1's generated views, as stored: back
            and left mirrored) or ``"photo"`` (the framed input photo, seen by the front camera).
        landmarks: ``[33, 3]`` float32 BlazePose landmarks ``[x_px, y_px, visibility 0..1]`` in the image's
            pixels (x right, y down, origin at the image's top-left corner); left = the person's left.
        image_size: ``(width, height)`` in pixels of the image the landmarks were found on.
    """

    view: str
    landmarks: np.ndarray
    image_size: tuple[int, int]


@dataclass(frozen=True)
class RigResult:
    """What :func:`rig_glb` made.

    Attributes:
        glb: the rigged GLB (skin, joints, inverse bind matrices, sample animation), or None.
        reason: why no rig was made (for a RIG_FAILED warning), None when ``glb`` is set.
        joints: joint name (VRM humanoid) -> ``(3,)`` position in the GLB's frame (y up); empty on failure.
        timings: seconds per phase (``read``, ``joints``, ``weights``, ``write``).
    """

    glb: bytes | None
    reason: str | None
    joints: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _observations(views: Sequence[ViewLandmarks]) -> list[joints.Observation]:
    """Checked views as :class:`~.joints.Observation`; :class:`~.joints.RigFailure` for unusable input."""
    out = []
    for view in views:
        if view.view not in BODY_VIEWS:
            raise joints.RigFailure(
                f"landmarks of an unknown view {view.view!r}; expected one of {BODY_VIEWS}"
            )
        marks = np.asarray(view.landmarks, dtype=np.float64)
        if marks.shape != (skeleton.NUM_LANDMARKS, 3) or not np.isfinite(marks).all():
            raise joints.RigFailure(
                f"the {view.view} view's landmarks must be a finite [33, 3] array, got {marks.shape}"
            )
        width, height = view.image_size
        if width <= 0 or height <= 0:
            raise joints.RigFailure(f"the {view.view} view's image size {view.image_size} is not positive")
        uv = marks[:, :2] / np.array([width, height], dtype=np.float64)
        out.append(joints.Observation(view_camera(view.view), uv, np.clip(marks[:, 2], 0.0, 1.0)))
    seen = [o for o in out if (o.visibility >= joints.MIN_VISIBILITY).sum() >= MIN_VIEW_LANDMARKS]
    if not seen:
        raise joints.RigFailure("no person was found in any view (too few visible body landmarks)")
    best = np.max([o.visibility for o in seen], axis=0)
    missing = [name for i, name in skeleton.REQUIRED_LANDMARKS.items() if best[i] < joints.MIN_VISIBILITY]
    if missing:
        raise joints.RigFailure(f"too few visible landmarks: {', '.join(missing)} not seen in any view")
    return seen


def rig_glb(
    glb: bytes, views: Sequence[ViewLandmarks], *, should_stop: Callable[[], bool] | None = None
) -> RigResult:
    """Rig the person of ``glb`` (the post-processing's plain GLB) from the landmarks of ``views``.

    Returns a :class:`RigResult` with the rigged GLB, or with the reason no rig was made. Raises
    :class:`~synchuman.pipelines.stage2_types.Stage2Cancelled` when ``should_stop()`` turns true (checked
    between phases and inside the long loops, at least every ~0.2 s on a CPU)."""
    stop = should_stop or (lambda: False)

    def check() -> None:
        if stop():
            raise Stage2Cancelled("the rig step stopped on request")

    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        check()
        doc = skin_gltf.Glb.parse(glb)
        mesh = skin_gltf.read_mesh(doc)
        observations = _observations(views)
        timings["read"] = time.perf_counter() - start
        check()
        # the views' cameras live in the model frame (z up): GLB (y up) -> model by the inverse rotation
        model = mesh.positions.astype(np.float64) @ np.linalg.inv(Z_UP_TO_Y_UP.astype(np.float64))
        triangulation = joints.triangulate(observations)
        placed = joints.place_joints(model[mesh.faces], triangulation)
        timings["joints"] = time.perf_counter() - start - timings["read"]
        check()
        at = time.perf_counter()
        index, weight = weights.bone_heat(model, mesh.faces, placed, check)
        timings["weights"] = time.perf_counter() - at
    except (skin_gltf.GlbError, joints.RigFailure) as exc:
        log.warning("rig failed: %s", exc)
        return RigResult(None, str(exc), timings=timings)
    check()
    at = time.perf_counter()
    to_glb = Z_UP_TO_Y_UP.astype(np.float64)
    positions = {name: placed[name] @ to_glb for name in skeleton.JOINTS}
    out = skin_gltf.write_skinned(
        doc, mesh, skeleton.JOINTS, skeleton.PARENTS, positions, index, weight, (animation.idle_sway(),)
    )
    timings["write"] = time.perf_counter() - at
    log.info(
        "rigged: %d joints, views used %s dropped %s relabelled %s, %.2f s",
        len(positions),
        triangulation.used,
        triangulation.dropped,
        triangulation.swapped,
        time.perf_counter() - start,
    )
    return RigResult(out, None, positions, timings)

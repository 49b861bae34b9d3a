"""Stage 2's rig step (progress phase ``rig``, after the export, when ``person_rigged.glb`` is asked for).

The pose model (:mod:`synchuman.rig.pose_model`) finds the body landmarks on the four body colour views of
stage 1 (front, right, back, left as stored; the front view is the framed input photo composited over white,
seen by the front camera), then :func:`synchuman.rig.api.rig_glb` rigs the exported ``person.glb``. Rigging is
an extra: whatever keeps it from working (pose model missing, no person found, views that disagree, a rig
error) gives a WARNING finding ``RIG_FAILED`` saying why, and the job keeps its plain GLB. Stopping is checked
between views and inside ``rig_glb`` (:class:`~synchuman.pipelines.stage2_types.Stage2Cancelled`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synchuman.pipelines.handoff import VIEW_NAMES
from synchuman.pipelines.stage2_types import QualityFinding, Severity, Stage2Cancelled

log = logging.getLogger(__name__)

#: Finding code of a rigged GLB that could not be made.
RIG_FAILED = "RIG_FAILED"
#: The body views the landmarks are looked for on (stage 1's first four: front, right, back, left).
BODY_VIEWS = VIEW_NAMES[:4]


@dataclass(frozen=True)
class RigOutcome:
    """The rig step's result: the rigged GLB or the RIG_FAILED finding (exactly one is set), the number of
    views a person was found on, and the step's wall seconds."""

    glb: bytes | None
    finding: QualityFinding | None
    views_with_person: int
    seconds: float


def _check(should_stop: Callable[[], bool]) -> None:
    if should_stop():
        raise Stage2Cancelled("the rig step stopped on request")


def view_landmarks(
    colors: Sequence[np.ndarray], should_stop: Callable[[], bool], pose_dir: Path | None = None
) -> list:
    """:class:`~synchuman.rig.api.ViewLandmarks` of every body view (uint8 ``[H, W, 3]`` each, in
    :data:`BODY_VIEWS` order) a person is found on; PoseModelError when the pose model cannot be loaded."""
    from synchuman.rig.api import ViewLandmarks
    from synchuman.rig.pose_model import load_pose_model

    model = load_pose_model(pose_dir)
    found = []
    for name, image in zip(BODY_VIEWS, colors, strict=False):
        _check(should_stop)
        marks = model.landmarks(np.asarray(image))
        if marks is not None:
            size = (image.shape[1], image.shape[0])
            found.append(ViewLandmarks(view=name, landmarks=marks, image_size=size))
    return found


def _failed(reason: str, views: int, started: float) -> RigOutcome:
    log.warning("no rigged GLB", extra={"reason": reason})
    finding = QualityFinding(Severity.WARNING, RIG_FAILED, f"no rigged GLB was made: {reason}; person.glb is "
                             "unaffected")
    return RigOutcome(None, finding, views, time.perf_counter() - started)


def rig_step(
    glb: bytes,
    colors: Sequence[np.ndarray],
    should_stop: Callable[[], bool],
    pose_dir: Path | None = None,
) -> RigOutcome:
    """Rig the exported ``glb`` from the landmarks of the body views ``colors`` (see the module docstring).

    Never raises for a person that cannot be rigged; raises Stage2Cancelled when ``should_stop()`` turns true.
    """
    from synchuman.rig.api import rig_glb
    from synchuman.rig.pose_model import PoseModelError

    started = time.perf_counter()
    try:
        views = view_landmarks(colors[: len(BODY_VIEWS)], should_stop, pose_dir)
    except PoseModelError as exc:
        return _failed(str(exc), 0, started)
    if not views:
        return _failed(f"the pose model found no person on the {len(BODY_VIEWS)} generated views", 0, started)
    try:
        result = rig_glb(glb, views, should_stop=should_stop)
    except Stage2Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - the rig is an extra: any fault of it must not fail the job
        log.exception("the rig step failed")
        return _failed(f"the rig step failed ({type(exc).__name__}: {exc})", len(views), started)
    if result.glb is None:
        return _failed(result.reason or "the rig step gave no reason", len(views), started)
    return RigOutcome(result.glb, None, len(views), time.perf_counter() - started)

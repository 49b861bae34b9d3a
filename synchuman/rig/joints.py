"""Joint positions from the landmarks of several views: triangulation with the views' known orthographic
cameras, then placement on the mesh's medial axis.

Every orthographic view gives two of the three coordinates of a landmark (front, back and photo: x and z;
the side views: y and z, model frame of :mod:`.views`). The 3-D landmark is the visibility-weighted least
squares point over the views. A view's left/right labels may be exchanged (a pose model on a back view, or
on a mirrored generated view, often does): every combination of labellings is tried and the one the views
agree on best is kept (ties keep the labels as given). A view that still disagrees with the others (median
residual above :data:`DISAGREE_UV` of the image) is dropped, worst first; when fewer than two views would be
left of two or more, the views disagree and no rig is made.

Placement: a joint moves along the front view's depth axis (y) to the middle of the stretch of the body the
line through it crosses there (front and back surface), the medial axis in depth; the stretch is the one
holding the triangulated depth (or the front-most one when no side view saw the joint). A stretch much longer
than the limb (a forearm resting on the chest: one merged stretch) keeps the triangulated depth when that lies
clearly off its middle. A joint outside the mesh (ray parity: a landmark just off a thin limb) moves along the
front view's image axes into the nearest part of the body within :data:`SNAP_SHARE` of the height; one that
is still outside fails the rig.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from synchuman.rig import raycast, skeleton
from synchuman.rig.views import ViewCamera

#: Landmarks with a visibility below this do not count.
MIN_VISIBILITY = 0.3
#: Weight of a hidden landmark (visibility below :data:`MIN_VISIBILITY`), per unit of its visibility.
HIDDEN_WEIGHT = 0.05
#: A view whose median landmark residual exceeds this share of the image disagrees with the others.
DISAGREE_UV = 0.03
#: Residual (image share) a non-default labelling must save per landmark to be preferred over the labels
#: as given.
SWAP_MARGIN = 0.002
#: A depth stretch is "merged" when the triangulated depth lies off its middle by more than this share of
#: its length; the triangulated depth is then kept.
MERGED_SHARE = 0.3
#: Furthest a joint outside the mesh may move into it, as a share of the mesh's height.
SNAP_SHARE = 0.04
#: A coordinate counts as observed when its least-squares information (sum of view weights) reaches this.
MIN_INFORMATION = 0.3


class RigFailure(Exception):
    """No usable pose; the message says why (it becomes the RIG_FAILED finding's text)."""


@dataclass(frozen=True)
class Observation:
    """The landmarks of one view: ``uv [33, 2]`` image coordinates (0..1), ``visibility [33]`` (0..1)."""

    camera: ViewCamera
    uv: np.ndarray
    visibility: np.ndarray


@dataclass(frozen=True)
class Triangulation:
    """3-D landmarks ``points [33, 3]`` (model frame), ``information [33, 3]`` per coordinate, which views
    were used and dropped, and which had their left/right labels exchanged."""

    points: np.ndarray
    information: np.ndarray
    used: tuple[str, ...]
    dropped: tuple[str, ...]
    swapped: tuple[str, ...]


def _solve(observations: list[Observation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of every landmark over ``observations``: points ``[33, 3]``, information
    ``[33, 3]`` (the diagonal of the normal matrix of the visible landmarks alone) and per-view residual
    norms ``[views, 33]``."""
    normal = np.zeros((skeleton.NUM_LANDMARKS, 3, 3))
    rhs = np.zeros((skeleton.NUM_LANDMARKS, 3))
    information = np.zeros((skeleton.NUM_LANDMARKS, 3))
    for obs in observations:
        seen = obs.visibility >= MIN_VISIBILITY
        # a hidden landmark's position is still the pose model's guess: it counts weakly, so it decides only a
        # coordinate that no view sees (the hips' x when the front views see them covered by clothes, say)
        w = np.where(seen, obs.visibility, HIDDEN_WEIGHT * np.maximum(obs.visibility, 0.01))
        a = obs.camera.matrix
        normal += w[:, None, None] * (a.T @ a)[None]
        rhs += w[:, None] * ((obs.uv - obs.camera.offset) @ a)
        information += np.where(seen, obs.visibility, 0.0)[:, None] * np.diagonal(a.T @ a)[None]
    points = np.linalg.solve(normal + 1e-12 * np.eye(3), rhs[..., None])[..., 0]
    residuals = np.stack([np.linalg.norm(o.camera.project(points) - o.uv, axis=1) for o in observations])
    return points, information, residuals


def _score(observations: list[Observation]) -> float:
    """Visibility-weighted mean residual of a set of views (image share)."""
    _, _, residuals = _solve(observations)
    weights = np.stack([np.where(o.visibility >= MIN_VISIBILITY, o.visibility, 0.0) for o in observations])
    return float((residuals * weights).sum() / max(weights.sum(), 1e-9))


def _swapped(obs: Observation) -> Observation:
    perm = skeleton.swap_permutation()
    return Observation(obs.camera, obs.uv[perm], obs.visibility[perm])


def _best_labelling(observations: list[Observation]) -> tuple[list[Observation], tuple[str, ...]]:
    """The left/right labelling of every view but the first that the views agree on best."""
    best: tuple[float, list[Observation], tuple[str, ...]] | None = None
    for flags in itertools.product((False, True), repeat=len(observations) - 1):
        rest = zip(observations[1:], flags, strict=True)
        chosen = [observations[0]] + [_swapped(o) if f else o for o, f in rest]
        score = _score(chosen) + SWAP_MARGIN * sum(flags)
        if best is None or score < best[0]:
            names = tuple(o.camera.name for o, f in zip(observations[1:], flags, strict=True) if f)
            best = (score, chosen, names)
    assert best is not None
    return best[1], best[2]


def _view_disagreement(observations: list[Observation]) -> np.ndarray:
    """Median residual ``[views]`` (image share) of each view's visible landmarks against the others."""
    _, _, residuals = _solve(observations)
    out = []
    for obs, res in zip(observations, residuals, strict=True):
        seen = obs.visibility >= 0.5
        out.append(float(np.median(res[seen])) if seen.any() else 0.0)
    return np.array(out)


def triangulate(observations: list[Observation]) -> Triangulation:
    """Landmarks in 3-D from the views (see the module docstring); :class:`RigFailure` when they disagree.

    The frontal views (front, photo) come first and keep their labels as given."""
    views = sorted(observations, key=lambda o: o.camera.name not in ("photo", "front"))
    dropped: list[str] = []
    while True:
        # the labelling is chosen again without a dropped view: a view that disagrees may have swayed it
        chosen, swapped = _best_labelling(views)
        if len(chosen) < 2:
            break
        disagreement = _view_disagreement(chosen)
        worst = int(np.argmax(disagreement))
        if disagreement[worst] <= DISAGREE_UV:
            break
        if len(chosen) == 2:
            names = " and ".join(o.camera.name for o in chosen)
            raise RigFailure(
                f"the body landmarks of the {names} views disagree (median offset "
                f"{disagreement.max():.1%} of the image, more than {DISAGREE_UV:.0%}); no rig was made"
            )
        dropped.append(views.pop(worst).camera.name)
    points, information, _ = _solve(chosen)
    used = tuple(o.camera.name for o in chosen)
    return Triangulation(points, information, used, tuple(dropped), tuple(s for s in swapped if s in used))


def _medial_depth(triangles: raycast.Triangles, point: np.ndarray, observed: bool) -> float:
    """Depth (model y) of the medial axis near ``point`` along the front view's line of sight."""
    stretches = raycast.intervals(raycast.line_hits(triangles, point, axis=1))
    if not len(stretches):
        return float(point[1])
    if not observed:
        entry, leave = stretches[0]
        return float((entry + leave) / 2)
    y = point[1]
    gap = np.maximum(stretches[:, 0] - y, 0) + np.maximum(y - stretches[:, 1], 0)
    entry, leave = stretches[int(np.argmin(gap))]
    middle = (entry + leave) / 2
    holds = entry <= y <= leave
    if holds and abs(y - middle) > MERGED_SHARE * (leave - entry):
        return float(y)
    return float(middle)


def _snap_inside(triangles: raycast.Triangles, point: np.ndarray, limit: float) -> np.ndarray:
    """``point`` moved along x or z (the image axes of the front view) into the nearest stretch of the body
    those lines cross within ``limit``: to the stretch's middle when it is short (a limb crossed sideways),
    else just inside its end (a limb along the line); unchanged when none is that near."""
    best: tuple[float, int, float] | None = None
    for axis in (0, 2):
        for entry, leave in raycast.intervals(raycast.line_hits(triangles, point, axis)):
            gap = max(entry - point[axis], point[axis] - leave, 0.0)
            if gap > limit:
                continue
            inset = min(limit / 2, (leave - entry) / 2)
            middle = (entry + leave) / 2
            target = (
                middle
                if leave - entry <= 2 * limit
                else (entry + inset if point[axis] < entry else leave - inset)
            )
            if best is None or abs(target - point[axis]) < best[0]:
                best = (abs(target - point[axis]), axis, target)
    moved = point.copy()
    if best is not None:
        moved[best[1]] = best[2]
    return moved


def place_joints(corners: np.ndarray, tri: Triangulation) -> dict[str, np.ndarray]:
    """Joint positions ``name -> (3,)`` (model frame) of the :data:`~.skeleton.JOINTS` and the bone ends,
    moved onto the medial axis of the mesh ``corners [F, 3, 3]``; :class:`RigFailure` names a joint left
    outside the mesh."""
    triangles = raycast.Triangles.of(corners)
    points = skeleton.key_points(tri.points)
    seen_y = (tri.information[:, 1] >= MIN_INFORMATION).astype(np.float64)
    observed = skeleton.key_points(np.repeat(seen_y[:, None], 3, axis=1))
    out = dict(points)
    limit = SNAP_SHARE * float(np.ptp(corners[..., 2])) if len(corners) else 0.0
    outside = []
    for name in skeleton.JOINTS:
        seen = bool(observed[name][0] > 0.999)
        p = points[name].copy()
        p[1] = _medial_depth(triangles, p, seen)
        if not raycast.is_inside(triangles, p):
            p = _snap_inside(triangles, p, limit)
            p[1] = _medial_depth(triangles, p, seen)
            if not raycast.is_inside(triangles, p):
                outside.append(name)
        out[name] = p
    if outside:
        raise RigFailure(
            f"joints {', '.join(outside)} lie outside the mesh (the landmarks do not match the body); "
            "no rig was made"
        )
    # bone ends follow their joints' depth shift (a hand's end moves with the hand, the head's top with it)
    for end, joint in (
        ("headTop", "head"),
        ("leftHandEnd", "leftHand"),
        ("rightHandEnd", "rightHand"),
        ("leftToes", "leftFoot"),
        ("rightToes", "rightFoot"),
    ):
        out[end] = points[end] + (out[joint] - points[joint])
    return out

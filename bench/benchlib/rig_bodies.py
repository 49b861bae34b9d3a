"""Articulated synthetic people with known skeletons for the rig step's tests and bench, and the checks the
rig must pass on them (issue 22).

A body is a union of capsules swept along its skeleton (trunk, pelvis, shoulders, neck, limbs, hands, feet)
and a sphere head, marched into one closed mesh; its 33 BlazePose landmarks are the skeleton's points (limb
landmarks on the limb axes, ears and face on the head). Coordinates: the model frame (z up, [-0.5, 0.5] box,
facing -y, the person's left at +x); the GLB written from it is y-up like ``person.glb``. Its views are
rendered with the pipeline's cameras and the project's rasteriser (:func:`landmark_views`): a landmark's
pixel is its projection (x mirrored on the views stage 1 stores mirrored) and its visibility says whether a
surface well in front of it hides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synchuman.geometry.raster import project, rasterize
from synchuman.pipelines.handoff import VIEW_NAMES
from synchuman.postprocess import export
from synchuman.postprocess.pipeline import MIRRORED_VIEWS, GeneratedViews, generated_bake_views
from synchuman.rig import skeleton
from synchuman.rig.api import ViewLandmarks

POSES = ("arms_down", "a_pose", "t_pose", "walking", "arms_crossed")
#: Limb lengths (model units; the body is ~0.92 tall).
UPPER_ARM, FOREARM, HAND, THIGH, SHIN, FOOT = 0.14, 0.13, 0.06, 0.2, 0.19, 0.08
#: Capsule radii.
RADII = {
    "trunk": 0.095,
    "pelvis": 0.06,
    "shoulders": 0.045,
    "neck": 0.035,
    "head": 0.07,
    "upper_arm": 0.035,
    "forearm": 0.03,
    "hand": 0.025,
    "thigh": 0.055,
    "shin": 0.042,
    "foot": 0.028,
}
#: A landmark counts as visible in a view when no surface lies more than this in front of it.
OCCLUSION_DEPTH = 0.07


def _unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# per pose: directions of (upper arm, forearm) of the left arm and (thigh, shin) of the left leg, and the
# same for the right side (model frame; the right side's x is mirrored by the caller where symmetric)
_LIMBS = {
    "arms_down": dict(la=(_unit(0.2, 0, -1), _unit(0.2, 0, -1)), ll=(_unit(0, 0, -1), _unit(0, 0, -1))),
    "a_pose": dict(la=(_unit(1, 0, -1), _unit(1, 0, -1)), ll=(_unit(0.1, 0, -1), _unit(0.05, 0, -1))),
    "t_pose": dict(la=(_unit(1, 0, 0), _unit(1, 0, 0)), ll=(_unit(0, 0, -1), _unit(0, 0, -1))),
    "walking": dict(
        la=(_unit(0.12, 0.4, -1), _unit(0.1, 0.1, -1)),
        ra=(_unit(-0.12, -0.45, -1), _unit(-0.1, -1.0, -1)),
        ll=(_unit(0.02, -0.4, -1), _unit(0.0, 0.05, -1)),
        rl=(_unit(-0.02, 0.35, -1), _unit(0.0, 0.6, -1)),
    ),
    "arms_crossed": dict(
        la=(_unit(0.1, -0.6, -0.8), _unit(-1, -0.9, 0.35)),
        ra=(_unit(-0.1, -0.55, -1), _unit(1, -1.0, -0.35)),
        ll=(_unit(0.03, 0, -1), _unit(0, 0, -1)),
    ),
}


@dataclass(frozen=True)
class Body:
    """One synthetic person: mesh (model frame), per-vertex part names, the 33 landmarks ``[33, 3]``."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    parts: np.ndarray
    part_names: tuple[str, ...]
    landmarks: np.ndarray

    @property
    def height(self) -> float:
        return float(np.ptp(self.vertices[:, 2]))

    def truth(self) -> dict[str, np.ndarray]:
        """The known joints in the GLB frame (y up)."""
        points = skeleton.key_points(self.landmarks)
        return {name: points[name] @ export.Z_UP_TO_Y_UP.astype(np.float64) for name in skeleton.JOINTS}

    def glb(self) -> bytes:
        """The body as a plain textured GLB, written the way the post-processing writes ``person.glb``."""
        uvs = (self.vertices[:, :2] + 0.5).astype(np.float32)
        texture = np.full((16, 16, 3), 180, np.uint8)
        texture[::2, ::2] = (200, 120, 90)
        return export.glb_bytes(self.vertices, self.faces, uvs, texture)


def pose_landmarks(pose: str) -> np.ndarray:
    """The 33 landmarks ``[33, 3]`` (model frame) of a pose in :data:`POSES`."""
    limbs = dict(_LIMBS[pose])
    mirror = np.array([-1.0, 1.0, 1.0])
    limbs.setdefault("ra", tuple(d * mirror for d in limbs["la"]))
    limbs.setdefault("rl", tuple(d * mirror for d in limbs["ll"]))
    p = np.zeros((33, 3))
    head = np.array([0.0, 0.0, 0.37])
    p[0] = head + (0, -0.065, -0.01)  # nose
    for left, right, offset in (
        (1, 4, (0.015, -0.06, 0.015)),
        (2, 5, (0.025, -0.058, 0.015)),
        (3, 6, (0.035, -0.055, 0.015)),
        (7, 8, (0.068, 0.0, 0.0)),
        (9, 10, (0.02, -0.06, -0.03)),
    ):
        p[left] = head + np.array(offset)
        p[right] = head + np.array(offset) * mirror
    for side, sign in ((0, 1.0), (1, -1.0)):
        arm, leg = limbs["la" if side == 0 else "ra"], limbs["ll" if side == 0 else "rl"]
        shoulder = np.array([0.13 * sign, 0.0, 0.24])
        elbow = shoulder + UPPER_ARM * arm[0]
        wrist = elbow + FOREARM * arm[1]
        hand_end = wrist + HAND * arm[1]
        hip = np.array([0.07 * sign, 0.0, -0.05])
        knee = hip + THIGH * leg[0]
        ankle = knee + SHIN * leg[1]
        toe = ankle + np.array([0.0, -FOOT, -0.05])
        heel = ankle + np.array([0.0, 0.03, -0.05])
        for index, point in (
            (11, shoulder),
            (13, elbow),
            (15, wrist),
            (17, hand_end),
            (19, hand_end),
            (21, wrist + 0.5 * (hand_end - wrist)),
            (23, hip),
            (25, knee),
            (27, ankle),
            (29, heel),
            (31, toe),
        ):
            p[index + side] = point
    return p


def _capsules(p: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """The body's (part, start, end, radius) capsules from its landmarks (the head: a sphere, start = end)."""
    hip_mid, shoulder_mid, ear_mid = (p[23] + p[24]) / 2, (p[11] + p[12]) / 2, (p[7] + p[8]) / 2
    r = RADII
    out = [
        ("trunk", hip_mid + (0, 0, 0.02), shoulder_mid - (0, 0, 0.01), r["trunk"]),
        ("pelvis", p[23], p[24], r["pelvis"]),
        ("shoulders", p[11], p[12], r["shoulders"]),
        ("neck", shoulder_mid, ear_mid, r["neck"]),
        ("head", ear_mid, ear_mid, r["head"]),
    ]
    for name, s, e, w, h, k, a, t in (
        ("left", 11, 13, 15, 23, 25, 27, 31),
        ("right", 12, 14, 16, 24, 26, 28, 32),
    ):
        hand_end = (p[s + 6] + p[s + 8]) / 2
        out += [
            (f"{name}_upper_arm", p[s], p[e], r["upper_arm"]),
            (f"{name}_forearm", p[e], p[w], r["forearm"]),
            (f"{name}_hand", p[w], hand_end, r["hand"]),
            (f"{name}_thigh", p[h], p[k], r["thigh"]),
            (f"{name}_shin", p[k], p[a], r["shin"]),
            (f"{name}_foot", p[a] + (0, 0.015, -0.045), p[t], r["foot"]),
        ]
    return out


def _capsule_sdf(points: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1) - radius


def build_body(pose: str, resolution: int = 80) -> Body:
    """The synthetic person in ``pose`` marched with cells of ``1 / resolution`` (the [-0.5, 0.5] box at
    ``resolution``^3; only the cells around the body are evaluated)."""
    from skimage.measure import marching_cubes

    landmarks = pose_landmarks(pose)
    capsules = _capsules(landmarks)
    step = 1.0 / resolution
    lo = landmarks.min(0) - 0.1
    hi = landmarks.max(0) + 0.1
    axes = [np.arange(lo[i], hi[i] + step, step) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    sdf = np.min([_capsule_sdf(grid, a, b, rad) for _, a, b, rad in capsules], axis=0)
    verts, faces, _, _ = marching_cubes(sdf, 0.0, spacing=(step, step, step))
    verts = verts + lo
    distances = np.stack([_capsule_sdf(verts, a, b, rad) for _, a, b, rad in capsules], axis=1)
    names = tuple(c[0] for c in capsules)
    return Body(pose, verts.astype(np.float32), faces.astype(np.int64), distances.argmin(1), names, landmarks)


def _chain(index: int) -> str:
    """The part-name prefix of the limb a landmark belongs to (the head for the face landmarks)."""
    if index <= 10:
        return "head"
    side = "left" if index % 2 else "right"
    return f"{side}_" + ("upper_arm" if index == 11 else "thigh" if index == 23 else "")


def landmark_views(
    body: Body, size: int = 256, views: tuple[str, ...] = VIEW_NAMES[:4]
) -> list[ViewLandmarks]:
    """The body's landmarks as a pose model would report them on stage 1's views of it: projected with the
    pipeline's cameras (:func:`~synchuman.postprocess.pipeline.generated_bake_views`), mirrored where stage 1
    stores the view mirrored, with visibility 1 unless the rendered surface at the landmark's pixel lies more
    than :data:`OCCLUSION_DEPTH` in front of it and belongs to another limb (a limb seen end-on still shows
    where its joints are; then 0.1). Labels are the person's true left and right."""
    cams = generated_bake_views(GeneratedViews(np.zeros((5, 8, 8, 3), np.uint8)), torch.device("cpu"))
    index = [VIEW_NAMES.index(v) for v in views]
    extr = torch.stack([cams[i].extrinsics for i in index]).float()
    intr = torch.stack([cams[i].intrinsics for i in index]).float()
    verts = torch.from_numpy(body.vertices)
    out = rasterize(verts, torch.from_numpy(body.faces), extr, intr, size, size, orthographic=True)
    screen = project(torch.from_numpy(body.landmarks).float(), extr, intr, True, size, size).numpy()
    result = []
    for k, (name, i) in enumerate(zip(views, index, strict=True)):
        x, y, depth = screen[k, :, 0], screen[k, :, 1], screen[k, :, 2]
        col = np.clip(x.astype(int), 0, size - 1)
        row = np.clip(y.astype(int), 0, size - 1)
        surface = out.depth[k].numpy()[row, col]
        face = out.face_id[k].numpy()[row, col]
        front_part = np.array(body.part_names)[body.parts[body.faces[np.maximum(face, 0), 0]]]
        own = np.array([part.startswith(_chain(i)) for i, part in enumerate(front_part)])
        visible = (face < 0) | (depth - surface <= OCCLUSION_DEPTH) | own
        px = size - x if i in MIRRORED_VIEWS else x
        marks = np.stack([px, y, np.where(visible, 1.0, 0.1)], axis=1).astype(np.float32)
        result.append(ViewLandmarks(name, marks, (size, size)))
    return result


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding numbers ``[P]`` of a triangle mesh at ``points [P, 3]`` (1 inside a closed
    outward-oriented surface, 0 outside; Van Oosterom-Strackee solid angles)."""
    tri = vertices[faces].astype(np.float64)
    out = []
    for p in np.asarray(points, dtype=np.float64):
        a, b, c = tri[:, 0] - p, tri[:, 1] - p, tri[:, 2] - p
        la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
        det = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = la * lb * lc + (a * b).sum(1) * lc + (b * c).sum(1) * la + (c * a).sum(1) * lb
        out.append(np.arctan2(det, den).sum() * 2 / (4 * np.pi))
    return np.abs(np.array(out))


@dataclass(frozen=True)
class Skin:
    """A skinned GLB read back: rest ``positions [V, 3]`` (y up), ``faces [F, 3]``, joint ``names``,
    ``parents [J]`` (-1 root), local ``translations [J, 3]``, ``inverse_bind [J, 4, 4]``, ``joints`` and
    ``weights`` ``[V, 4]``."""

    positions: np.ndarray
    faces: np.ndarray
    names: tuple[str, ...]
    parents: np.ndarray
    translations: np.ndarray
    inverse_bind: np.ndarray
    joints: np.ndarray
    weights: np.ndarray

    @classmethod
    def read(cls, data: bytes) -> Skin:
        from synchuman.rig.skin_gltf import Glb

        glb = Glb.parse(data)
        gltf = glb.gltf
        skin = gltf["skins"][0]
        prim = gltf["meshes"][0]["primitives"][0]
        nodes = gltf["nodes"]
        ids = skin["joints"]
        parent_of = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
        parents = np.array([ids.index(parent_of[i]) if i in parent_of else -1 for i in ids])
        return cls(
            positions=glb.read_accessor(prim["attributes"]["POSITION"]).astype(np.float64),
            faces=glb.read_accessor(prim["indices"]).reshape(-1, 3).astype(np.int64),
            names=tuple(nodes[i]["name"] for i in ids),
            parents=parents,
            translations=np.array([nodes[i].get("translation", [0, 0, 0]) for i in ids], dtype=np.float64),
            inverse_bind=glb.read_accessor(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1),
            joints=glb.read_accessor(prim["attributes"]["JOINTS_0"]).astype(np.int64),
            weights=glb.read_accessor(prim["attributes"]["WEIGHTS_0"]).astype(np.float64),
        )

    def world(self, rotations: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """World matrices ``[J, 4, 4]`` of the joints with local ``rotations`` (name -> 3x3) applied."""
        out = np.zeros((len(self.names), 4, 4))
        for j, name in enumerate(self.names):  # parents come first
            local = np.eye(4)
            local[:3, 3] = self.translations[j]
            if rotations and name in rotations:
                local[:3, :3] = rotations[name]
            out[j] = local if self.parents[j] < 0 else out[self.parents[j]] @ local
        return out

    def pose(self, rotations: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Linear blend skinning: posed positions ``[V, 3]``, the joints' skinning matrices ``[J, 4, 4]``."""
        skinning = self.world(rotations) @ self.inverse_bind
        homogeneous = np.c_[self.positions, np.ones(len(self.positions))]
        per_joint = np.einsum("jab,vb->vja", skinning, homogeneous)[..., :3]  # [V, J, 3]
        picked = np.take_along_axis(per_joint, self.joints[..., None], axis=1)  # [V, 4, 3]
        return (picked * self.weights[..., None]).sum(1), skinning


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """3x3 rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * cross + (1 - np.cos(t)) * cross @ cross


#: The bends of the deformation check: (label, joint rotated)
BENDS = (
    ("left elbow", "leftLowerArm"),
    ("right elbow", "rightLowerArm"),
    ("left knee", "leftLowerLeg"),
    ("right knee", "rightLowerLeg"),
    ("left shoulder", "leftUpperArm"),
    ("right shoulder", "rightUpperArm"),
    ("left hip", "leftUpperLeg"),
    ("right hip", "rightUpperLeg"),
)


def bend(skin: Skin, joint: str, degrees: float = 60.0) -> dict[str, float]:
    """Rotate ``joint`` by ``degrees`` about the axis normal to its bone and the person's facing (+z in the
    GLB; elbows, shoulders and hips flex forward) and measure, over the edges that move (a stricter sample
    than all edges), the 95th percentiles of the stretch ``max(l'/l - 1, 0)`` and of the length change
    ``|l'/l - 1|`` (compression at the crease included), and the share of triangles (of all; of those that
    move) whose normal turns against the rest normal carried by the triangle's dominant joint."""
    j = skin.names.index(joint)
    child = int(np.flatnonzero(skin.parents == j)[0])
    direction = skin.translations[child]
    axis = np.cross(direction, [0.0, 0.0, 1.0])
    if np.linalg.norm(axis) < 1e-6 * np.linalg.norm(direction):
        axis = np.array([1.0, 0.0, 0.0])
    posed, skinning = skin.pose({joint: rotation(axis, degrees)})
    moved = np.linalg.norm(posed - skin.positions, axis=1) > 1e-6
    edges = np.unique(
        np.sort(np.concatenate([skin.faces[:, [0, 1]], skin.faces[:, [1, 2]], skin.faces[:, [2, 0]]]), 1),
        axis=0,
    )
    rest_len = np.linalg.norm(skin.positions[edges[:, 0]] - skin.positions[edges[:, 1]], axis=1)
    new_len = np.linalg.norm(posed[edges[:, 0]] - posed[edges[:, 1]], axis=1)
    keep = (rest_len > 1e-9) & (moved[edges[:, 0]] | moved[edges[:, 1]])
    change = new_len[keep] / rest_len[keep] - 1

    def normals(p: np.ndarray) -> np.ndarray:
        t = p[skin.faces]
        return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    rest_n, new_n = normals(skin.positions), normals(posed)
    valid = np.linalg.norm(rest_n, axis=1) > 1e-12
    dominant = skin.joints[skin.faces[:, 0], np.argmax(skin.weights[skin.faces[:, 0]], axis=1)]
    expected = np.einsum("fab,fb->fa", skinning[dominant, :3, :3], rest_n)
    flipped = valid & ((expected * new_n).sum(1) < 0)
    moved_faces = valid & moved[skin.faces].any(1)
    return {
        "stretch_p95": float(np.percentile(np.maximum(change, 0), 95)) if len(change) else 0.0,
        "change_p95": float(np.percentile(np.abs(change), 95)) if len(change) else 0.0,
        "flips": float(flipped.sum() / max(valid.sum(), 1)),
        "flips_moved": float(flipped[moved_faces].sum() / max(moved_faces.sum(), 1)),
    }


def check_rig(body: Body, joints: dict[str, np.ndarray], glb: bytes) -> dict[str, float]:
    """The issue's figures for one rigged body: mean / max joint error (share of the body's height), joints
    outside the mesh (winding number < 0.5), largest |weight sum - 1|, most influences per vertex, left-limb
    vertices weighted to a right-limb joint and vice versa, and the worst bend's stretch and flips."""
    truth = body.truth()
    errors = np.array([np.linalg.norm(joints[n] - truth[n]) for n in skeleton.JOINTS]) / body.height
    skin = Skin.read(glb)
    model = skin.positions @ export.Z_UP_TO_Y_UP.astype(np.float64).T
    inside = winding_numbers(
        model,
        skin.faces,
        np.stack([joints[n] for n in skeleton.JOINTS]) @ export.Z_UP_TO_Y_UP.astype(np.float64).T,
    )
    nonzero = skin.weights > 0
    joint_side = np.array([skeleton.side(n) for n in skin.names])
    # the GLB keeps the body's vertex order: parts per vertex apply directly
    part_side = np.array(
        [1 if n.startswith("left_") else -1 if n.startswith("right_") else 0 for n in body.part_names]
    )
    vertex_side = part_side[body.parts]
    weighted_side = joint_side[skin.joints] * nonzero
    bleed = int(((vertex_side[:, None] * weighted_side) < 0).any(1).sum())
    bends = [bend(skin, joint) for _, joint in BENDS]
    return {
        "joint_error_mean": float(errors.mean()),
        "joint_error_max": float(errors.max()),
        "joints_outside": int((inside < 0.5).sum()),
        "weight_sum_error": float(np.abs(skin.weights.sum(1) - 1).max()),
        "max_influences": int(nonzero.sum(1).max()),
        "left_right_bleed": bleed,
        "stretch_p95": max(b["stretch_p95"] for b in bends),
        "change_p95": max(b["change_p95"] for b in bends),
        "flips": max(b["flips"] for b in bends),
        "flips_moved": max(b["flips_moved"] for b in bends),
    }

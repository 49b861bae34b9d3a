"""The humanoid skeleton of a rig: 19 joints named with the VRM humanoid bone names, their parents, and how
their positions follow from the 33 BlazePose body landmarks.

VRM humanoid names (``hips``, ``spine``, ``chest``, ``neck``, ``head``, ``leftShoulder``, ``leftUpperArm``,
``leftLowerArm``, ``leftHand``, ``leftUpperLeg``, ``leftLowerLeg``, ``leftFoot`` and the ``right*`` ones) are
what VRM tools, three-vrm, UniVRM and Blender's VRM add-on map automatically; "left" is the person's left.

Landmark indices are MediaPipe Pose's (BlazePose 33-point topology): 0 nose, 7/8 ears, 11/12 shoulders,
13/14 elbows, 15/16 wrists, 17/18 pinkies, 19/20 index fingers, 23/24 hips, 25/26 knees, 27/28 ankles,
31/32 foot indices (odd = left, even = right, from 11 on).
"""

from __future__ import annotations

import numpy as np

#: Joint names (VRM humanoid) in hierarchy order: every parent comes before its children.
JOINTS = (
    "hips",
    "spine",
    "chest",
    "neck",
    "head",
    "leftShoulder",
    "leftUpperArm",
    "leftLowerArm",
    "leftHand",
    "rightShoulder",
    "rightUpperArm",
    "rightLowerArm",
    "rightHand",
    "leftUpperLeg",
    "leftLowerLeg",
    "leftFoot",
    "rightUpperLeg",
    "rightLowerLeg",
    "rightFoot",
)
#: Parent of each joint (``None`` for the root, ``hips``).
PARENTS: dict[str, str | None] = {
    "hips": None,
    "spine": "hips",
    "chest": "spine",
    "neck": "chest",
    "head": "neck",
    "leftShoulder": "chest",
    "leftUpperArm": "leftShoulder",
    "leftLowerArm": "leftUpperArm",
    "leftHand": "leftLowerArm",
    "rightShoulder": "chest",
    "rightUpperArm": "rightShoulder",
    "rightLowerArm": "rightUpperArm",
    "rightHand": "rightLowerArm",
    "leftUpperLeg": "hips",
    "leftLowerLeg": "leftUpperLeg",
    "leftFoot": "leftLowerLeg",
    "rightUpperLeg": "hips",
    "rightLowerLeg": "rightUpperLeg",
    "rightFoot": "rightLowerLeg",
}
#: Where each joint's bone ends: a child joint, or a key point (:func:`key_points`) for the leaves.
TAILS = {
    "hips": "spine",
    "spine": "chest",
    "chest": "neck",
    "neck": "head",
    "head": "headTop",
    "leftShoulder": "leftUpperArm",
    "leftUpperArm": "leftLowerArm",
    "leftLowerArm": "leftHand",
    "leftHand": "leftHandEnd",
    "rightShoulder": "rightUpperArm",
    "rightUpperArm": "rightLowerArm",
    "rightLowerArm": "rightHand",
    "rightHand": "rightHandEnd",
    "leftUpperLeg": "leftLowerLeg",
    "leftLowerLeg": "leftFoot",
    "leftFoot": "leftToes",
    "rightUpperLeg": "rightLowerLeg",
    "rightLowerLeg": "rightFoot",
    "rightFoot": "rightToes",
}
#: Further segments of a joint's bone for the skin weights (joint, from, to): the pelvis, between the hip
#: joints, belongs to the hips (so the lower belly and the buttocks follow the hips, not a thigh).
EXTRA_SEGMENTS = (("hips", "leftUpperLeg", "rightUpperLeg"),)
#: Number of BlazePose landmarks.
NUM_LANDMARKS = 33
#: BlazePose landmark index pairs (left, right) (eyes, ears, mouth, body).
LEFT_RIGHT_PAIRS = tuple((i, i + 3) for i in (1, 2, 3)) + tuple((i, i + 1) for i in range(7, 33, 2))
#: Landmarks a rig cannot do without (both sides): shoulders, elbows, wrists, hips, knees, ankles.
REQUIRED_LANDMARKS = {
    11: "left shoulder",
    12: "right shoulder",
    13: "left elbow",
    14: "right elbow",
    15: "left wrist",
    16: "right wrist",
    23: "left hip",
    24: "right hip",
    25: "left knee",
    26: "right knee",
    27: "left ankle",
    28: "right ankle",
}
#: Share of the hips-to-shoulders line at which the spine and chest joints sit.
SPINE_AT, CHEST_AT = 0.3, 0.62
#: Share of the shoulders-to-ears line at which the head joint sits; the head's top lies as far above it.
HEAD_AT = 0.55
#: Share of the neck-to-upper-arm line at which a shoulder (clavicle) joint sits.
CLAVICLE_AT = 0.3


def swap_permutation() -> np.ndarray:
    """Landmark index permutation ``[33]`` that exchanges every left landmark with its right one."""
    perm = np.arange(NUM_LANDMARKS)
    for left, right in LEFT_RIGHT_PAIRS:
        perm[left], perm[right] = right, left
    return perm


def side(name: str) -> int:
    """+1 for the person's left limbs (shoulder to hand, upper leg to foot), -1 for the right, 0 otherwise."""
    return 1 if name.startswith("left") else -1 if name.startswith("right") else 0


def key_points(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Joint positions and bone ends ``name -> (3,)`` from 3-D landmark positions ``[33, 3]`` (any frame).

    Limb joints are the landmarks themselves (upper arm = shoulder, lower arm = elbow, hand = wrist, upper leg
    = hip, lower leg = knee, foot = ankle); the trunk joints lie on the hips-to-shoulders line; the neck at
    the shoulders' midpoint, the head part way up to the ears, the clavicles part way from neck to shoulder.
    """
    p = np.asarray(landmarks, dtype=np.float64)
    hip_mid, shoulder_mid, ear_mid = (p[23] + p[24]) / 2, (p[11] + p[12]) / 2, (p[7] + p[8]) / 2
    head = shoulder_mid + HEAD_AT * (ear_mid - shoulder_mid)
    out = {
        "hips": hip_mid,
        "spine": hip_mid + SPINE_AT * (shoulder_mid - hip_mid),
        "chest": hip_mid + CHEST_AT * (shoulder_mid - hip_mid),
        "neck": shoulder_mid,
        "head": head,
        "headTop": ear_mid + (ear_mid - head),
    }
    for name, s, e, w, hand_a, hand_b, h, k, a, toe in (
        ("left", 11, 13, 15, 17, 19, 23, 25, 27, 31),
        ("right", 12, 14, 16, 18, 20, 24, 26, 28, 32),
    ):
        out[f"{name}Shoulder"] = shoulder_mid + CLAVICLE_AT * (p[s] - shoulder_mid)
        out[f"{name}UpperArm"], out[f"{name}LowerArm"], out[f"{name}Hand"] = p[s], p[e], p[w]
        out[f"{name}HandEnd"] = (p[hand_a] + p[hand_b]) / 2
        out[f"{name}UpperLeg"], out[f"{name}LowerLeg"], out[f"{name}Foot"] = p[h], p[k], p[a]
        out[f"{name}Toes"] = p[toe]
    return out


def bones(points: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bone segments: heads ``[S, 3]``, tails ``[S, 3]`` and the index ``[S]`` into :data:`JOINTS` of the
    joint each belongs to: every joint's bone (joint to tail, in :data:`JOINTS` order), then the
    :data:`EXTRA_SEGMENTS`."""
    segments = [(name, name, TAILS[name]) for name in JOINTS] + list(EXTRA_SEGMENTS)
    heads = np.stack([points[head] for _, head, _ in segments])
    tails = np.stack([points[tail] for _, _, tail in segments])
    owner = np.array([JOINTS.index(joint) for joint, _, _ in segments])
    return heads, tails, owner

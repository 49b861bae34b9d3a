"""A procedural sample animation: a 2-second looped idle sway made from the skeleton alone.

Rotations are local to each joint node; a node's bind rotation is the identity, so its axes are the GLB's
(y up, the person facing +z, the person's left at +x). Every channel is a sine of the loop's phase, so the
last key equals the first and the clip loops seamlessly: hips twist, the spine and chest sway sideways
against each other, the head nods, the arms swing forward and back in opposite phase with the elbows
flexing a little.
"""

from __future__ import annotations

import numpy as np

from synchuman.rig.skin_gltf import Animation

#: Length of the loop in seconds and keys per loop (the last key repeats the first).
DURATION_S = 2.0
KEYS = 41
#: (joint, axis, amplitude in degrees, phase in cycles, harmonic, bias in degrees) of each channel.
_CHANNELS = (
    ("hips", (0, 1, 0), 4.0, 0.0, 1, 0.0),
    ("spine", (0, 0, 1), 3.0, 0.0, 1, 0.0),
    ("chest", (0, 0, 1), -2.0, 0.0, 1, 0.0),
    ("head", (1, 0, 0), 5.0, 0.25, 2, 0.0),
    ("leftUpperArm", (1, 0, 0), 14.0, 0.0, 1, 0.0),
    ("rightUpperArm", (1, 0, 0), -14.0, 0.0, 1, 0.0),
    ("leftLowerArm", (1, 0, 0), 8.0, 0.0, 1, -10.0),
    ("rightLowerArm", (1, 0, 0), -8.0, 0.0, 1, -10.0),
)


def axis_angle_quaternions(axis: tuple[float, float, float], degrees: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[K, 4]`` (x, y, z, w) of rotations by ``degrees [K]`` about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    half = np.radians(np.asarray(degrees, dtype=np.float64)) / 2
    return np.concatenate([np.sin(half)[:, None] * a[None], np.cos(half)[:, None]], axis=1)


def idle_sway() -> Animation:
    """The looped idle clip ("idle", :data:`DURATION_S` seconds, :data:`KEYS` linear keys)."""
    times = np.linspace(0.0, DURATION_S, KEYS)
    phase = times / DURATION_S
    rotations = {}
    for joint, axis, amplitude, offset, harmonic, bias in _CHANNELS:
        angle = bias + amplitude * np.sin(2 * np.pi * (harmonic * phase + offset))
        rotations[joint] = axis_angle_quaternions(axis, angle)
    return Animation("idle", times, rotations)

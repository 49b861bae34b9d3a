"""The rig step (issue 22) on articulated synthetic people with known skeletons (bench/benchlib/rig_bodies):
five poses rendered with the pipeline's cameras and rasteriser, their landmarks projected from the known
skeleton (the pose model is tested in test_rig_pose_model.py). Per pose: joint error, joints inside the mesh,
weight sums and influences, no left/right bleeding, 60-degree bends of elbows, knees, shoulders and hips;
the GLB against the Khronos validator and trimesh; the reasons for poses that cannot be rigged; stopping."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from benchlib import rig_bodies
from conftest import REPO_ROOT, require_tool

from synchuman.pipelines.stage2_types import Stage2Cancelled
from synchuman.rig import skeleton
from synchuman.rig.api import RigResult, ViewLandmarks, rig_glb

#: Marching-cubes cells per box side of the synthetic bodies (~8k triangles) and the views' size in pixels.
RESOLUTION, VIEW_SIZE = 64, 128
#: VRM 1.0 humanoid bone names (the required ones and the ones this rig uses).
VRM_BONES = {
    "hips", "spine", "chest", "upperChest", "neck", "head", "leftShoulder", "leftUpperArm", "leftLowerArm",
    "leftHand", "rightShoulder", "rightUpperArm", "rightLowerArm", "rightHand", "leftUpperLeg",
    "leftLowerLeg", "leftFoot", "leftToes", "rightUpperLeg", "rightLowerLeg", "rightFoot", "rightToes",
}  # fmt: skip


@pytest.fixture(scope="module")
def rigged() -> dict[str, tuple[rig_bodies.Body, list[ViewLandmarks], RigResult, dict | None]]:
    """Every pose built, viewed, rigged and checked once; prints the per-pose table."""
    out = {}
    for pose in rig_bodies.POSES:
        body = rig_bodies.build_body(pose, RESOLUTION)
        views = rig_bodies.landmark_views(body, VIEW_SIZE)
        result = rig_glb(body.glb(), views)
        checks = rig_bodies.check_rig(body, result.joints, result.glb) if result.glb else None
        out[pose] = (body, views, result, checks)
    print()
    for pose, (body, _, result, checks) in out.items():
        print(pose, len(body.faces), "faces", result.reason or {k: round(v, 4) for k, v in checks.items()})
    return out


@pytest.mark.parametrize("pose", rig_bodies.POSES)
def test_a_synthetic_pose_is_rigged_within_the_bounds(rigged, pose: str) -> None:
    body, _, result, checks = rigged[pose]
    assert result.reason is None and result.glb is not None
    assert set(result.joints) == set(skeleton.JOINTS)
    assert checks["joint_error_mean"] <= 0.03, checks
    assert checks["joints_outside"] == 0, checks
    assert checks["weight_sum_error"] <= 1e-4, checks
    assert checks["max_influences"] <= 4, checks
    assert checks["left_right_bleed"] == 0, checks
    assert checks["stretch_p95"] <= 0.30, checks
    assert checks["flips"] < 0.01, checks


def test_the_skeleton_is_a_vrm_humanoid_hierarchy(rigged) -> None:
    _, _, result, _ = rigged["t_pose"]
    skin = rig_bodies.Skin.read(result.glb)
    assert len(skin.names) >= 19 and set(skin.names) <= VRM_BONES
    assert [skin.names[p] if p >= 0 else None for p in skin.parents] == [
        skeleton.PARENTS[n] for n in skin.names
    ]
    # the bind pose is the generated pose: bind-pose skinning leaves every vertex where it is
    posed, _ = skin.pose({})
    assert np.abs(posed - skin.positions).max() < 1e-5


def test_the_rigged_glb_validates_loads_and_animates(rigged, tmp_path: Path) -> None:
    import trimesh

    body, _, result, _ = rigged["a_pose"]
    validator = require_tool(REPO_ROOT / "node_modules" / "gltf-validator", "npm package gltf-validator")
    path = tmp_path / "rigged.glb"
    path.write_bytes(result.glb)
    script = (
        "const v=require('gltf-validator');const fs=require('fs');"
        "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[1])))"
        ".then(r=>{console.log(JSON.stringify(r.issues));}).catch(e=>{console.error(e);process.exit(1);});"
    )
    assert validator.exists()
    done = subprocess.run(
        ["node", "-e", script, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    issues = json.loads(done.stdout)
    print(
        "validator:",
        issues["numErrors"],
        "errors",
        issues["numWarnings"],
        "warnings",
        issues["numInfos"],
        "infos",
    )
    assert issues["numErrors"] == 0, issues["messages"]
    scene = trimesh.load(io.BytesIO(result.glb), file_type="glb")
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) == len(body.faces)
    assert mesh.visual.material.baseColorTexture is not None  # the textured material is kept
    gltf = json.loads(result.glb[20 : 20 + int.from_bytes(result.glb[12:16], "little")])
    (clip,) = gltf["animations"]
    assert len(clip["channels"]) >= 4
    skin = rig_bodies.Skin.read(result.glb)
    assert {c["target"]["path"] for c in clip["channels"]} == {"rotation"}
    assert {gltf["nodes"][c["target"]["node"]]["name"] for c in clip["channels"]} <= set(skin.names)
    times = gltf["accessors"][clip["samplers"][0]["input"]]
    assert times["min"] == [0.0] and times["max"] == [2.0]


def test_the_view_cameras_are_the_bakes_cameras() -> None:
    """A model-frame point lands where the project's rasteriser projects it with the bake's cameras (x
    mirrored on the views stage 1 stores mirrored), for every view; the photo is the front camera."""
    import torch

    from synchuman.geometry.raster import project
    from synchuman.pipelines.handoff import VIEW_NAMES
    from synchuman.postprocess.pipeline import MIRRORED_VIEWS, GeneratedViews, generated_bake_views
    from synchuman.rig.views import view_camera

    points = np.random.default_rng(0).uniform(-0.45, 0.45, size=(50, 3))
    cams = generated_bake_views(GeneratedViews(np.zeros((5, 8, 8, 3), np.uint8)), torch.device("cpu"))
    for index, name in enumerate(VIEW_NAMES[:4]):
        extrinsics, intrinsics = cams[index].extrinsics[None].float(), cams[index].intrinsics[None].float()
        screen = project(torch.from_numpy(points).float(), extrinsics, intrinsics, True, 100, 100)
        screen = screen[0, :, :2].numpy() / 100
        if index in MIRRORED_VIEWS:
            screen[:, 0] = 1 - screen[:, 0]
        camera = view_camera(name)
        assert camera.mirrored == (index in MIRRORED_VIEWS)
        np.testing.assert_allclose(camera.project(points), screen, atol=1e-5)
    np.testing.assert_allclose(view_camera("photo").project(points), view_camera("front").project(points))


def _with_labels_swapped(view: ViewLandmarks) -> ViewLandmarks:
    return ViewLandmarks(view.view, view.landmarks[skeleton.swap_permutation()], view.image_size)


def _shifted(view: ViewLandmarks, dx: float, dy: float) -> ViewLandmarks:
    marks = view.landmarks.copy()
    marks[:, 0] += dx * view.image_size[0]
    marks[:, 1] += dy * view.image_size[1]
    return ViewLandmarks(view.view, marks, view.image_size)


def test_left_right_labels_exchanged_on_the_back_views_give_the_same_joints(rigged) -> None:
    body, views, result, _ = rigged["walking"]
    relabelled = [_with_labels_swapped(v) if v.view in ("back", "left") else v for v in views]
    again = rig_glb(body.glb(), relabelled)
    assert again.reason is None
    error = max(np.linalg.norm(again.joints[n] - result.joints[n]) for n in skeleton.JOINTS)
    assert error <= 0.01 * body.height


def test_landmark_noise_of_a_pose_model_keeps_the_rig_within_the_bounds(rigged) -> None:
    """Every landmark moved by Gaussian noise of 0.6 % of the image per axis (~5 px on a 768 view)."""
    body, views, _, _ = rigged["walking"]
    rng = np.random.default_rng(7)
    noisy = []
    for v in views:
        marks = v.landmarks.copy()
        marks[:, :2] += rng.normal(0.0, 0.006 * v.image_size[0], size=(33, 2))
        noisy.append(ViewLandmarks(v.view, marks, v.image_size))
    result = rig_glb(body.glb(), noisy)
    assert result.reason is None
    checks = rig_bodies.check_rig(body, result.joints, result.glb)
    print("walking, noisy landmarks:", {k: round(v, 4) for k, v in checks.items()})
    assert checks["joint_error_mean"] <= 0.03 and checks["joints_outside"] == 0, checks
    assert checks["left_right_bleed"] == 0 and checks["stretch_p95"] <= 0.30, checks
    assert checks["flips"] < 0.01, checks


def test_landmarks_hidden_in_the_views_that_see_a_coordinate_still_give_it(rigged) -> None:
    """Only the front and back views see x; with the hips marked hidden there (visibility 0.1, as a pose model
    does under a coat) their x still comes from those views' guesses, not from nowhere."""
    body, views, result, _ = rigged["a_pose"]
    covered = []
    for v in views:
        marks = v.landmarks.copy()
        if v.view in ("front", "back"):
            marks[[23, 24], 2] = 0.1
        covered.append(ViewLandmarks(v.view, marks, v.image_size))
    again = rig_glb(body.glb(), covered)
    assert again.reason is None
    truth = body.truth()
    for name in ("hips", "leftUpperLeg", "rightUpperLeg"):
        assert np.linalg.norm(again.joints[name] - truth[name]) <= 0.01 * body.height, name


def test_a_joint_just_off_a_thin_limb_moves_into_it(rigged) -> None:
    """The left wrist seen 0.035 (more than the forearm's radius) beside the forearm by the front and back
    views: it is put back inside the forearm, on its axis."""
    body, views, _, _ = rigged["arms_down"]
    beside = []
    for v in views:
        marks = v.landmarks.copy()
        if v.view in ("front", "back"):
            marks[15, 0] += 0.035 * v.image_size[0]
        beside.append(ViewLandmarks(v.view, marks, v.image_size))
    result = rig_glb(body.glb(), beside)
    assert result.reason is None
    error = np.linalg.norm(result.joints["leftHand"] - body.truth()["leftHand"])
    assert error <= 0.015 * body.height


@pytest.mark.parametrize("bad_view", ["right", "front"])
def test_one_view_that_disagrees_is_dropped(rigged, bad_view: str) -> None:
    body, views, result, _ = rigged["a_pose"]
    bad = [_shifted(v, 0.05, 0.12) if v.view == bad_view else v for v in views]
    again = rig_glb(body.glb(), bad)
    assert again.reason is None
    error = max(np.linalg.norm(again.joints[n] - result.joints[n]) for n in skeleton.JOINTS)
    assert error <= 0.02 * body.height


def test_unusable_poses_give_a_reason_not_a_rig(rigged) -> None:
    body, views, _, _ = rigged["a_pose"]
    glb = body.glb()

    def reason(views_in) -> str:
        result = rig_glb(glb, views_in)
        assert result.glb is None and not result.joints
        return result.reason

    nobody = [ViewLandmarks(v.view, np.zeros((33, 3), np.float32), v.image_size) for v in views]
    assert "no person" in reason(nobody)
    assert "no person" in reason([])
    no_wrist = []
    for v in views:
        marks = v.landmarks.copy()
        marks[15, 2] = 0.0
        no_wrist.append(ViewLandmarks(v.view, marks, v.image_size))
    assert "left wrist" in reason(no_wrist)
    front, right = views[0], views[1]
    assert "disagree" in reason([front, _shifted(right, 0.0, 0.1)])
    beside = [_shifted(v, 0.3 if v.view in ("front", "back") else 0.0, 0.0) for v in views]
    assert "outside the mesh" in reason(beside)
    assert "unknown view" in reason([ViewLandmarks("top", front.landmarks, front.image_size)])
    assert "[33, 3]" in reason([ViewLandmarks("front", front.landmarks[:20], front.image_size)])
    result = rig_glb(b"not a glb at all", views)
    assert result.glb is None and "GLB" in result.reason
    rigged_once = rig_glb(glb, views).glb
    assert "already skinned" in rig_glb(rigged_once, views).reason


def test_should_stop_stops_the_rig_step(rigged) -> None:
    body, views, _, _ = rigged["t_pose"]
    glb = body.glb()
    with pytest.raises(Stage2Cancelled):
        rig_glb(glb, views, should_stop=lambda: True)
    calls: list[int] = []
    rig_glb(glb, views, should_stop=lambda: bool(calls.append(1)))
    total = len(calls)
    assert total >= 6  # between the phases and inside the loops

    def stop_at_the_last_check() -> bool:
        calls.append(1)
        return len(calls) >= 2 * total

    with pytest.raises(Stage2Cancelled):
        rig_glb(glb, views, should_stop=stop_at_the_last_check)

"""The rig step wired into stage 2 (issue 22): ``person_rigged.glb`` asked for on tiny random checkpoints
gives either the rigged GLB or - what random weights give - a WARNING finding RIG_FAILED that says why, and
the job still succeeds with its plain GLB; the phase ``rig`` runs after ``export`` (and not at all unless
asked: tests/test_stage2_pipeline.py); a stop asked for during the rig step's work ends it within 2 s; a
missing pose model is a RIG_FAILED reason naming the set-up script, and the stage-2 service says so as it
starts; the CLI's --rig asks for the rigged GLB."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, require_tool
from test_stage2_pipeline import SMALL, FakeDinoV2, person_inputs

from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
from synchuman.options import RIGGED_GLB, Stage2Options
from synchuman.pipelines import stage2_rig
from synchuman.pipelines.info import PipelineInfo
from synchuman.pipelines.stage2 import Stage2Pipeline
from synchuman.pipelines.stage2_models import load_stage2_models
from synchuman.pipelines.stage2_types import Severity, Stage2Cancelled
from synchuman.rig.pose_files import POSE_DIR_ENV, POSE_MODELS

RIGGED = Stage2Options(**{**SMALL.__dict__, "outputs": (RIGGED_GLB,)})
STOP_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def pose_dir() -> Path:
    folder = Path(os.environ.get(POSE_DIR_ENV, REPO_ROOT / "ckpts" / "pose"))
    for model in POSE_MODELS:
        require_tool(folder / model.name, f"pose model {model.name} (scripts/fetch_pose_model.py)")
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, pose_dir: Path) -> Stage2Pipeline:
    root = tmp_path_factory.mktemp("ckpts")
    write_tiny_stage2(root, seed=0, dinov2_dim=32)
    models = load_stage2_models(CheckpointLayout(root))
    info = PipelineInfo(str(root), "tiny", "cpu", "float32")
    return Stage2Pipeline(models, FakeDinoV2(), info, render_views=0, pose_dir=pose_dir)


def test_a_rigged_glb_request_on_random_weights_succeeds_with_the_plain_glb_and_says_why(pipeline) -> None:
    import trimesh

    events: list[tuple[str, int, int]] = []
    result = pipeline.run(person_inputs(), RIGGED, lambda *e: events.append(e), lambda: False)
    starts = [phase for phase, step, total in events if step == total == 0]
    assert starts[-2:] == ["export", "rig"]
    assert "rig" in result.phase_seconds
    assert not result.report.errors
    scene = trimesh.load(io.BytesIO(result.glb), file_type="glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) == result.report.face_count > 0
    failed = [f for f in result.report.findings if f.code == stage2_rig.RIG_FAILED]
    if RIGGED_GLB in result.extra_files:  # a pose was found after all: then it is a skinned GLB
        assert not failed and b'"skins"' in result.extra_files[RIGGED_GLB][:200_000]
    else:
        assert len(failed) == 1 and failed[0].severity is Severity.WARNING
        assert failed[0].message.startswith("no rigged GLB was made: ")
        assert "found no person" in failed[0].message, failed[0].message


def test_a_stop_inside_the_rig_step_at_work_ends_it_within_2_s(monkeypatch) -> None:
    """The pose model's part replaced by the landmarks of a synthetic body (a test double), so ``rig_glb``
    does its real work on a real GLB: counted once, then stopped at its middle check; the step must end
    within 2 s of the first ``should_stop()`` that says yes. (The served stage stopping in ``rig`` is in
    tests/test_stage2_cancel_cpu.py.)"""
    from benchlib import rig_bodies

    body = rig_bodies.build_body("a_pose", 64)
    views = rig_bodies.landmark_views(body, 256)
    monkeypatch.setattr(stage2_rig, "view_landmarks", lambda colors, should_stop, pose_dir=None: views)
    checks: list[float] = []
    assert stage2_rig.rig_step(body.glb(), [], lambda: bool(checks.append(0.0))).glb is not None
    middle, calls, asked = len(checks) // 2, [], []

    def should_stop() -> bool:
        calls.append(1)
        if len(calls) >= middle and not asked:
            asked.append(time.monotonic())
        return bool(asked)

    with pytest.raises(Stage2Cancelled):
        stage2_rig.rig_step(body.glb(), [], should_stop)
    assert middle >= 3 and asked and time.monotonic() - asked[0] < STOP_WITHIN_S


def test_a_missing_pose_model_is_a_rig_failed_reason(tmp_path: Path) -> None:
    colors = [np.full((64, 64, 3), 255, np.uint8)] * 4
    outcome = stage2_rig.rig_step(b"glTF", colors, lambda: False, tmp_path)
    assert outcome.glb is None and outcome.finding.code == stage2_rig.RIG_FAILED
    assert "fetch_pose_model.py" in outcome.finding.message and str(tmp_path) in outcome.finding.message


def test_the_cli_rig_flag_asks_for_the_rigged_glb_and_downloads_it() -> None:
    from synchuman.v1 import common_pb2
    from synchuman_cli.commands.reconstruct import download_names, job_options
    from synchuman_cli.main import build_parser

    args = build_parser().parse_args(["reconstruct", "p.jpg", "-o", "p.glb", "--rig", "--format", "rigged"])
    outputs = list(job_options(args).reconstruction.outputs)
    assert outputs == [common_pb2.OUTPUT_FORMAT_RIGGED_GLB]
    assert RIGGED_GLB in download_names(args)
    plain = build_parser().parse_args(["reconstruct", "p.jpg", "-o", "p.glb"])
    assert not job_options(plain).reconstruction.outputs


def test_the_stage2_service_says_at_start_up_that_the_pose_model_is_missing(tmp_path: Path, caplog) -> None:
    from services.stage2.backend import Stage2PipelineBackend
    from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
    from synchuman.checkpoints.tiny_common import write_model_folder

    layout = CheckpointLayout(tmp_path)
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, 0, layout.dinov2_weights.name, pickle=True)
    write_tiny_stage2(tmp_path, 0, int(TINY_DINOV2_CONFIG["args"]["embed_dim"]))
    with caplog.at_level("WARNING", logger="services.stage2.backend"):
        backend = Stage2PipelineBackend.load(tmp_path, "cpu", "float32", render_views=0)
    assert backend.pipeline.pose_dir == layout.pose
    said = [r.getMessage() for r in caplog.records if "pose model missing" in r.getMessage()]
    assert said and "fetch_pose_model.py" in said[0] and "RIG_FAILED" in said[0]


def test_a_profile_may_ask_for_the_rigged_glb(tmp_path: Path) -> None:
    from gateway.profile_file import load_profiles
    from synchuman.v1 import common_pb2

    shipped = (REPO_ROOT / "gateway" / "profiles.toml").read_text()
    path = tmp_path / "profiles.toml"
    extra = '[animated]\ndescription = "rigged"\n\n[animated.reconstruction]\noutputs = ["rigged_glb"]\n'
    path.write_text(f"{shipped}\n{extra}")
    outputs = list(load_profiles(path).get("animated").options.reconstruction.outputs)
    assert outputs == [common_pb2.OUTPUT_FORMAT_RIGGED_GLB]

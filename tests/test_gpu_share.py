"""The GPU turn of two stages on one GPU (services/common/gpu_share.py): stage 1 holds it while it works,
stage 2 waits for it at its check points; across processes, released by a holder's death, bounded, and
cancellable. Stage 2's backend pauses at its GPU check points only (a test double of the pipeline, then the
tiny real pipeline)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from test_compose import COMPOSE_FILE, run_config
from test_compose import compose_bin as compose_bin  # noqa: F401 - the fixture (Docker Compose v2, fetched)

from services.common.arguments import CommandLineError
from services.common.gpu_share import (
    GpuTurn,
    TurnHoldingBackend,
    YieldingStopCheck,
    add_gpu_share_arguments,
    gpu_turn_from_args,
)
from services.stage2.backend import HOST_PHASES, Stage2PipelineBackend

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pathlib import Path
from services.common.gpu_share import GpuTurn
with GpuTurn(Path(sys.argv[1])).hold():
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the turn in ``tmp_path`` (stage 1 at work); SIGKILLed at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def yielded_seconds() -> float:
    return REGISTRY.get_sample_value("synchuman_gpu_share_yield_seconds_total", {"stage": "stage2"}) or 0.0


def test_a_holder_process_blocks_the_waiter_until_it_dies(tmp_path, holder):
    turn = GpuTurn(tmp_path)
    assert turn.busy()
    started = time.monotonic()
    assert turn.wait_while_busy(lambda: False, 0.3) >= 0.3 and turn.busy()
    assert time.monotonic() - started < 1.0
    threading.Timer(0.3, holder.kill).start()  # SIGKILL: the kernel drops its lock
    waited = turn.wait_while_busy(lambda: False, 10.0)
    assert 0.2 < waited < 2.0 and not turn.busy()


def test_a_free_turn_costs_no_wait_and_stage1_holders_do_not_exclude_each_other(tmp_path):
    turn = GpuTurn(tmp_path / "made" / "on-first-use")
    assert not turn.busy() and turn.wait_while_busy(lambda: False, 5.0) < 0.05
    with turn.hold(), turn.hold():  # two stage-1 requests at once (shared lock): no deadlock
        assert turn.busy()
    assert not turn.busy()


def test_cancel_while_waiting_stops_promptly(tmp_path, holder):
    cancelled = threading.Event()
    check = YieldingStopCheck(GpuTurn(tmp_path), cancelled.is_set, max_wait_s=30.0)
    threading.Timer(0.2, cancelled.set).start()
    started = time.monotonic()
    assert check() is True
    assert time.monotonic() - started < 0.5 and 0.1 < check.yielded_s < 0.5


def test_the_wait_is_bounded_per_request_and_counted(tmp_path, holder):
    before = yielded_seconds()
    check = YieldingStopCheck(GpuTurn(tmp_path), lambda: False, max_wait_s=0.3)
    started = time.monotonic()
    assert check() is False  # waited its whole bound, then goes on although stage 1 still works
    assert 0.3 <= time.monotonic() - started < 0.8
    assert check() is False and time.monotonic() - started < 0.9  # bound used up: no second wait
    assert yielded_seconds() - before == pytest.approx(check.yielded_s, abs=1e-6)
    bound = REGISTRY.get_sample_value("synchuman_gpu_share_wait_bound_reached_total", {"stage": "stage2"})
    assert bound and bound >= 1


def test_stage1_backend_holds_the_turn_while_it_runs(tmp_path):
    turn = GpuTurn(tmp_path)

    class Backend:
        voxel_resolution = 64

        def run(self, inputs, options, progress, should_stop):
            return turn.busy()

    wrapped = TurnHoldingBackend(Backend(), turn)
    assert wrapped.run(None, None, None, None) is True and not turn.busy()
    assert wrapped.voxel_resolution == 64


def test_the_flag_is_used_on_cuda_only_and_a_bad_folder_is_refused(tmp_path):
    parser = argparse.ArgumentParser()
    add_gpu_share_arguments(parser, priority=False)
    args = parser.parse_args(["--gpu-share-dir", str(tmp_path)])
    assert args.gpu_share_max_wait == 60.0
    assert gpu_turn_from_args(args, "cpu") is None
    assert gpu_turn_from_args(args, "cuda:0").path.parent == tmp_path
    (tmp_path / "file").write_text("")
    with pytest.raises(CommandLineError, match="--gpu-share-dir .*cannot create"):
        gpu_turn_from_args(parser.parse_args(["--gpu-share-dir", str(tmp_path / "file")]), "cuda")


class ScriptedPipeline:
    """Stage-2 pipeline double: reports the given phases, calling ``should_stop`` after each (as the real
    pipeline does), and records how long each check took."""

    voxel_resolution = 64
    info = defaults = None

    def __init__(self, phases: list[str]) -> None:
        self.phases = phases
        self.checks: list[tuple[str, float]] = []
        self.reached = {phase: threading.Event() for phase in phases}

    def run(self, inputs, options, progress, should_stop):
        for phase in self.phases:
            progress(phase, 1, 1)
            self.reached[phase].set()
            started = time.monotonic()
            if should_stop():
                raise RuntimeError("stopped")
            self.checks.append((phase, time.monotonic() - started))
        return "result"


def test_stage2_pauses_at_gpu_check_points_and_runs_its_cpu_phases_on(tmp_path):
    turn = GpuTurn(tmp_path)
    pipeline = ScriptedPipeline(["decimate", "cut_fill", "uv_atlas", "bake", "export"])
    backend = Stage2PipelineBackend(pipeline, turn, max_wait_s=30.0)
    events: list = []
    result: list = []
    with turn.hold():
        worker = threading.Thread(
            target=lambda: result.append(backend.run(None, None, lambda *e: events.append(e), lambda: False))
        )
        worker.start()
        assert pipeline.reached["bake"].wait(5.0)
        time.sleep(0.3)
        assert [phase for phase, _ in pipeline.checks] == ["decimate", "cut_fill", "uv_atlas"]  # not paused
    worker.join(5.0)
    assert result == ["result"] and [e[0] for e in events] == pipeline.phases
    waited = dict(pipeline.checks)
    assert waited["bake"] >= 0.3 and waited["export"] < 0.1
    assert {"decimate", "cut_fill", "uv_atlas", "export"} <= HOST_PHASES and "bake" not in HOST_PHASES


def test_stage2_cancelled_while_paused_stops_promptly(tmp_path, holder):
    pipeline = ScriptedPipeline(["sampling", "decode"])
    backend = Stage2PipelineBackend(pipeline, GpuTurn(tmp_path), max_wait_s=30.0)
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="stopped"):
        backend.run(None, None, lambda *e: None, cancelled.is_set)
    assert time.monotonic() - started < 0.6 and pipeline.checks == []


def test_a_claim_holds_back_new_stage1_requests_until_the_gpu_section_ends(tmp_path):
    turn = GpuTurn(tmp_path)
    check = YieldingStopCheck(turn, lambda: False, max_wait_s=5.0)
    assert check() is False and not check.claiming and not turn.claimed()  # stage 1 idle: no claim
    with turn.hold():
        worker = threading.Thread(target=check)
        worker.start()
        time.sleep(0.2)
        assert turn.claimed() and check.claiming  # waiting for the running stage-1 request, claiming
    worker.join(2.0)
    started = time.monotonic()
    stage1 = TurnHoldingBackend(type("B", (), {"run": lambda self, *a: turn.busy()})(), turn, max_wait_s=5.0)
    threading.Timer(0.3, setattr, (check, "host_only", True)).start()  # a CPU phase ends the claim
    assert stage1.run(None, None, None, lambda: False) is True
    assert 0.25 < time.monotonic() - started < 1.5 and not turn.claimed() and not check.claiming
    check.host_only = False
    with turn.hold():
        threading.Thread(target=check).start()
        time.sleep(0.1)
        assert turn.claimed()
        del check  # the request's check object going away (request over) ends the claim too
    time.sleep(0.1)
    assert not turn.claimed()


def test_a_new_stage1_request_waits_for_a_claim_only_up_to_its_bound_or_a_stop(tmp_path):
    turn = GpuTurn(tmp_path)
    fd = turn.claim()
    try:
        stage1 = TurnHoldingBackend(type("B", (), {"run": lambda self, *a: "ran"})(), turn, max_wait_s=0.3)
        started = time.monotonic()
        assert stage1.run(None, None, None, lambda: False) == "ran"
        assert 0.3 <= time.monotonic() - started < 0.9
        stage1.max_wait_s = 30.0
        started = time.monotonic()
        assert stage1.run(None, None, None, lambda: True) == "ran"  # a stop ends the wait (the run raises)
        assert time.monotonic() - started < 0.2
    finally:
        os.close(fd)


def test_a_stage2_request_waits_for_stage1_once_then_runs_beside_younger_requests(tmp_path):
    """Issue 25: after the stage-1 requests running at its first wait have finished, a stage-2 request's later
    GPU sections claim the GPU when stage 1 is busy (no newer stage-1 request starts) but do not wait for the
    stage-1 request that started during its CPU phase (before, each GPU section waited a whole one)."""
    turn = GpuTurn(tmp_path)
    check = YieldingStopCheck(turn, lambda: False, max_wait_s=30.0)
    assert check() is False and not check.has_yielded  # stage 1 idle: nothing to yield to yet

    def hold_for(seconds: float) -> threading.Thread:
        ready = threading.Event()

        def hold() -> None:
            with turn.hold():
                ready.set()
                time.sleep(seconds)

        thread = threading.Thread(target=hold)
        thread.start()
        assert ready.wait(2.0)
        return thread

    first = hold_for(0.4)
    started = time.monotonic()
    assert check() is False
    assert time.monotonic() - started >= 0.3 and check.has_yielded  # waited for the running request
    first.join()
    check.host_only = True  # a CPU phase: stage 1 starts the next (younger) job's request
    second = hold_for(0.6)
    check.host_only = False  # the next GPU section
    started = time.monotonic()
    assert check() is False
    assert time.monotonic() - started < 0.2, "waited again for a younger job's stage-1 request"
    assert check.claiming and turn.claimed()  # but no further stage-1 request starts during the section
    check.release()
    second.join()


def test_a_burst_on_one_gpu_does_not_starve_the_older_jobs_stage2(tmp_path):
    """Issue 25: stage 1 and stage 2 as two worker threads sharing the turn, a burst of 6 jobs. Stage 1 runs
    its queue back to back; each job then goes to stage 2 (GPU sections around a CPU phase). Before, job 1's
    stage 2 waited while stage 1 ran jobs 2-6 (bounded only by --gpu-share-max-wait); now each GPU section
    waits for at most the stage-1 request already running, and only the first one that has to wait (later
    ones run beside younger jobs' stage-1 requests), jobs finish in submission order, and job 1 is done before
    stage 1 has finished job 4."""
    import queue

    turn = GpuTurn(tmp_path)
    stage1_s, gpu_steps, step_s = 0.3, 6, 0.03
    clock = time.monotonic
    started = clock()
    done1: dict[int, float] = {}
    done2: dict[int, float] = {}
    yielded: dict[int, float] = {}
    handoff: queue.Queue = queue.Queue()

    class Stage1:
        def run(self, job, options, progress, should_stop):
            time.sleep(stage1_s)

    class Stage2:
        voxel_resolution = 64
        info = defaults = None

        def run(self, job, options, progress, should_stop):
            for phase in ("sampling", "cut_fill", "bake", "export"):
                for step in range(gpu_steps if phase in ("sampling", "bake") else 1):
                    progress(phase, step, gpu_steps)
                    if should_stop():
                        raise RuntimeError("stopped")
                    time.sleep(step_s)
            return job

    stage1 = TurnHoldingBackend(Stage1(), turn)

    def stage1_worker() -> None:
        for job in range(1, 7):
            stage1.run(job, None, None, lambda: False)
            done1[job] = clock() - started
            handoff.put(job)
        handoff.put(None)

    def stage2_worker() -> None:
        while (job := handoff.get()) is not None:
            backend = Stage2PipelineBackend(Stage2(), turn, max_wait_s=60.0)
            before = yielded_seconds()
            backend.run(job, None, lambda *e: None, lambda: False)
            done2[job] = clock() - started
            yielded[job] = yielded_seconds() - before

    workers = [threading.Thread(target=stage1_worker), threading.Thread(target=stage2_worker)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60.0)
    assert sorted(done2) == list(range(1, 7))
    assert sorted(done2, key=done2.get) == list(range(1, 7))  # completion in submission order
    assert done2[1] < done1[4], (done1, done2)  # before: after stage 1 had run the whole burst
    # a stage-2 request waits for at most the stage-1 request running at its first wait
    assert max(yielded.values()) < stage1_s + 0.15, yielded
    assert not turn.claimed() and not turn.busy()


def test_tiny_stage2_pipeline_waits_for_stage1_before_its_first_sampler_step(tmp_path):
    from test_stage2_pipeline import SMALL, WIDTH, FakeDinoV2, person_inputs

    from synchuman.checkpoints.layout import CheckpointLayout
    from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
    from synchuman.pipelines.info import PipelineInfo
    from synchuman.pipelines.stage2 import Stage2Pipeline
    from synchuman.pipelines.stage2_models import load_stage2_models

    write_tiny_stage2(tmp_path / "ckpts", seed=0, dinov2_dim=WIDTH)
    pipeline = Stage2Pipeline(
        load_stage2_models(CheckpointLayout(tmp_path / "ckpts")),
        FakeDinoV2(),
        PipelineInfo("tiny", "tiny", "cpu", "float32"),
        render_views=0,
    )
    turn = GpuTurn(tmp_path / "share")
    backend = Stage2PipelineBackend(pipeline, turn, max_wait_s=30.0)
    events: list = []
    results: list = []
    before = yielded_seconds()
    with turn.hold():
        worker = threading.Thread(
            target=lambda: results.append(
                backend.run(person_inputs(), SMALL, lambda *e: events.append(e), lambda: False)
            )
        )
        worker.start()
        waiting_since = time.monotonic()
        while not events and time.monotonic() - waiting_since < 30:
            time.sleep(0.05)
        time.sleep(0.5)
        # paused at the check before the first sampler step (sampling's start already reported)
        assert events == [("condition", 0, 0), ("sampling", 0, SMALL.steps)]
    worker.join(60.0)
    assert results and results[0].glb[:4] == b"glTF"
    assert [e for e in events if e[0] == "sampling"][-1] == ("sampling", SMALL.steps, SMALL.steps)
    assert yielded_seconds() - before >= 0.4


def test_the_launcher_gives_both_stages_one_share_folder_when_they_share_the_gpu():
    from services.launcher import EmbeddedConfig, child_specs
    from services.stage1.main import add_arguments as stage1_arguments
    from services.stage2.main import add_arguments as stage2_arguments

    def folders(config: EmbeddedConfig) -> dict[str, str | None]:
        found = {}
        for spec in child_specs(config):
            argv = list(spec.argv)
            found[spec.name] = argv[argv.index("--gpu-share-dir") + 1] if "--gpu-share-dir" in argv else None
        return found

    shared = folders(config := EmbeddedConfig.with_free_ports(device="cuda"))
    assert shared["stage1"] == shared["stage2"] == str(config.gpu_share_dir)
    assert shared["preprocess"] is None and shared["gateway"] is None
    assert str(config.ports["stage1"]) in shared["stage1"]  # one folder per deployment
    for add_arguments, name in ((stage1_arguments, "stage1"), (stage2_arguments, "stage2")):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        argv = list(next(s for s in child_specs(config) if s.name == name).argv)
        assert parser.parse_args(argv[argv.index(name) + 1 :]).gpu_share_dir == shared[name]
    assert set(folders(EmbeddedConfig(device="cuda", share_gpu=False)).values()) == {None}
    assert set(folders(EmbeddedConfig(device="cpu")).values()) == {None}


def test_the_one_gpu_compose_override_shares_the_gpu_and_the_turn_folder(request):
    """compose.one-gpu.yaml: both stages on $SYNCHUMAN_GPU, both with the same share folder on one volume."""
    import json

    compose = request.getfixturevalue("compose_bin")
    result = run_config(compose, COMPOSE_FILE, REPO / "compose.one-gpu.yaml", SYNCHUMAN_GPU="3")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("stage1", "stage2"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == ["3"], name
        assert services[name]["environment"]["SYNCHUMAN_GPU_SHARE_DIR"] == "/run/synchuman/gpu-share"
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        assert mounts["/run/synchuman/gpu-share"]["source"] == "gpu-share"
        assert mounts["/ckpts"]["read_only"] is True  # the base file's mounts stay


def test_env_example_lists_the_one_gpu_variable():
    import re

    used = set(re.findall(r"\$\{(\w+)", (REPO / "compose.one-gpu.yaml").read_text()))
    listed = set(re.findall(r"^#?\s*(\w+)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    assert used and used <= listed

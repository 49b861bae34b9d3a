"""The deployment benches' library (bench/benchlib): the analysis of job records (stage spans, overlap,
throughput, kill verdict) and the process lookup used for memory, on synthetic records; the client half
(submit, watch, kill test) against a gateway test double over real gRPC; bench/bench_deployment.py's flags."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from benchlib.analyse import analyse, kill_verdict
from benchlib.jobs import JobRecord, KillTest, run_jobs
from benchlib.poll import pids_listening, rss_bytes
from benchlib.report import markdown
from google.rpc import status_pb2

from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _record(
    index: int,
    t0: float,
    s1: tuple[float, float],
    s2: tuple[float, float],
    attempts=None,
    retry_at: float | None = None,
):
    r = JobRecord(index, t0, job_id=f"j{index}")
    # Each stage: the gateway's dispatch marker ("start", no work start) a second before the service takes
    # the request off its queue, then the service's progress events carrying that work start.
    r.events = [
        (t0 + 0.1, "progress", "preprocess", t0 + 0.1),
        (t0 + 0.5, "completed", "preprocess", None),
        (s1[0] - 1.0, "progress", "stage1", None),
        (s1[0] + 0.5, "progress", "stage1", s1[0]),
        (s1[1], "completed", "stage1", None),
        (s2[0] - 1.0, "progress", "stage2", None),
        (s2[0] + 0.5, "progress", "stage2", s2[0]),
    ]
    if retry_at is not None:
        r.events += [(retry_at, "retrying", "", None), (retry_at + 3.0, "progress", "stage2", retry_at + 2.5)]
    r.events += [(s2[1], "completed", "stage2", None), (s2[1] + 0.1, "finished", "", None)]
    r.final = reconstruction_pb2.Job(
        id=r.job_id,
        state=reconstruction_pb2.JOB_STATE_SUCCEEDED,
        attempts=attempts or {"multiview": 1, "reconstruction": 1},
    )
    return r


def test_pipelined_jobs_overlap_and_throughput() -> None:
    # stage 1 takes 10 s per job back to back; stage 2 takes 6 s and starts when stage 1 of the job ends.
    records = [
        _record(k + 1, 0.0, (1 + 10 * k, 11 + 10 * k), (11 + 10 * k, 17 + 10 * k)) for k in range(3)
    ]
    records[0].final.artifacts.add().blob.CopyFrom(common_pb2.BlobHeader(name="voxels.bin", size_bytes=600))
    result = analyse(records)
    assert [j["voxels"] for j in result["jobs"]] == [100, None, None]
    assert [o["seconds"] for o in result["overlaps"]] == [6.0, 6.0]
    assert result["overlaps"][0]["fraction_of_stage1"] == pytest.approx(0.6)
    jobs = result["jobs"]
    assert [j["stage1_s"] for j in jobs] == [10, 10, 10] and jobs[2]["stage1_wait_s"] == pytest.approx(20.5)
    summary = result["summary"]
    assert summary["jobs_succeeded"] == 3
    assert summary["throughput_jobs_per_min"] == pytest.approx(60 * 3 / 37.1)
    assert summary["steady_jobs_per_min"] == pytest.approx(60 * 2 / 20)
    table = markdown(
        result, {"setup": "x", "gpu": True, "peak_gpu": {"GPU 0": 3 << 30}, "peak_process": {}}
    )
    assert (
        "| 2/1 | 6.0 | 60% |" in table and "| peak memory GPU 0 (nvidia-smi, whole GPU) | 3.00 GiB |" in table
    )


def test_serial_jobs_do_not_overlap() -> None:
    records = [
        _record(k + 1, 0.0, (1 + 16 * k, 11 + 16 * k), (11 + 16 * k, 17 + 16 * k)) for k in range(2)
    ]
    assert analyse(records)["overlaps"][0]["seconds"] == 0.0


def test_stage2_span_counts_only_the_attempt_after_the_retry() -> None:
    r = _record(1, 0.0, (1, 11), (11, 30), retry_at=14.0)
    assert r.span("stage2") == (16.5, 30)  # the retried attempt's work start, not the first attempt's


def test_queue_time_counts_as_wait_not_stage_time() -> None:
    r = _record(1, 0.0, (5, 11), (20, 30))
    assert r.span("stage1") == (5, 11)  # not the dispatch marker at 4.0
    assert r.span("stage2") == (20, 30)


def test_kill_verdict() -> None:
    records = [
        _record(1, 0.0, (1, 11), (11, 30), {"multiview": 1, "reconstruction": 2}, retry_at=14.0)
    ]
    kill = KillTest(supervisor=None, job_index=1, address="", delay_s=0.0)
    kill.killed_pid, kill.killed_at, kill.serving_again_s = 123, 13.0, 2.5
    assert kill_verdict(kill, records)["ok"]
    records[0].final.attempts["multiview"] = 2  # stage 1 ran again: the kill lost work
    assert not kill_verdict(kill, records)["ok"]
    records[0].final.attempts["multiview"] = 1
    records[0].final.attempts["reconstruction"] = 1  # the kill did not hit the job in stage 2
    assert not kill_verdict(kill, records)["ok"]


def test_pids_listening_matches_the_address_flag_only() -> None:
    code = "import time; time.sleep(30)"
    own = subprocess.Popen([sys.executable, "-c", code, "--address", "127.0.0.1:1"])
    other = subprocess.Popen([sys.executable, "-c", code, "--stage2", "127.0.0.1:1", "--address", "x"])
    try:
        deadline = time.monotonic() + 10
        while own.pid not in pids_listening("127.0.0.1:1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids_listening("127.0.0.1:1") == [own.pid]
        assert rss_bytes(own.pid) > 0
    finally:
        for p in (own, other):
            p.kill()
            p.wait()


class _FakeGateway(reconstruction_pb2_grpc.ReconstructionServiceServicer):
    """Test double of the gateway: jobs go through three simulated stages, each running one job at a time
    (like one GPU slot per stage), so consecutive jobs pipeline. Setting ``crash`` fails the running stage-2
    call once; the job then retries stage 2 only."""

    STEP_S = 0.02

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.locks = {s: threading.Lock() for s in (1, 2, 3)}
        self.crash = threading.Event()
        self.changed = threading.Condition()

    def _emit(self, job: dict, state: int, **event) -> None:
        with self.changed:
            message = reconstruction_pb2.WatchJobResponse(
                sequence=len(job["events"]) + 1, state=state, **event
            )
            message.time.GetCurrentTime()
            job["events"].append(message)
            self.changed.notify_all()

    def _run(self, job: dict) -> None:
        running = reconstruction_pb2.JOB_STATE_RUNNING
        for stage, name in ((1, "preprocess"), (2, "multiview"), (3, "reconstruction")):
            with self.locks[stage]:
                while True:
                    job["attempts"][name] = job["attempts"].get(name, 0) + 1
                    failed = False
                    for step in range(5):
                        self._emit(job, running, progress=common_pb2.ProgressEvent(stage=stage, step=step))
                        time.sleep(self.STEP_S)
                        if stage == 3 and self.crash.is_set():
                            self.crash.clear()
                            failed = True
                            break
                    if not failed:
                        break
                    self._emit(job, running, retrying=status_pb2.Status(code=14, message="stage2 died"))
            self._emit(job, running, stage_completed=stage)
        final = reconstruction_pb2.Job(
            id=job["id"], state=reconstruction_pb2.JOB_STATE_SUCCEEDED, attempts=job["attempts"]
        )
        self._emit(job, final.state, finished=final)

    def SubmitJob(self, request_iterator, context):  # noqa: N802
        assert next(request_iterator).WhichOneof("payload") == "start"
        assert sum(len(r.chunk.data) for r in request_iterator) > 0
        job = {"id": f"job{len(self.jobs) + 1}", "events": [], "attempts": {}}
        self.jobs[job["id"]] = job
        threading.Thread(target=self._run, args=(job,), daemon=True).start()
        return reconstruction_pb2.SubmitJobResponse(job=reconstruction_pb2.Job(id=job["id"]))

    def WatchJob(self, request, context):  # noqa: N802
        job, sent = self.jobs[request.job_id], request.after_sequence
        while True:
            with self.changed:
                self.changed.wait_for(lambda after=sent: len(job["events"]) > after, timeout=1.0)
                pending = job["events"][sent:]
            for message in pending:
                sent = message.sequence
                yield message
                if message.WhichOneof("event") == "finished":
                    return


class _FakeSupervisor:
    def __init__(self, gateway: _FakeGateway) -> None:
        self.gateway = gateway

    def kill_child(self, name: str) -> int:
        assert name == "stage2"
        self.gateway.crash.set()
        return 4242


def test_run_jobs_against_a_gateway_double_pipelines_and_survives_the_kill() -> None:
    from concurrent import futures

    gateway = _FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    reconstruction_pb2_grpc.add_ReconstructionServiceServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        kill = KillTest(_FakeSupervisor(gateway), 2, f"127.0.0.1:{port}", 0.0)
        options = common_pb2.JobOptions()
        records = run_jobs(f"127.0.0.1:{port}", b"photo", 4, options, kill, time.monotonic() + 60)
    finally:
        server.stop(None)
    result = analyse(records)
    assert result["summary"]["jobs_succeeded"] == 4
    assert result["summary"]["overlap_s_total"] > 0  # stage 1 of job k+1 ran while job k was in stage 2
    assert 0 < result["summary"]["stage1_concurrent_with_stage2_s"] <= result["summary"]["stage1_busy_s"]
    verdict = kill_verdict(kill, records)
    assert verdict["ok"], verdict["verdict"]
    assert verdict["attempts"] == {"preprocess": 1, "multiview": 1, "reconstruction": 2}


def test_the_bench_script_loads_from_its_path_and_maps_its_flags() -> None:
    """bench/bench_deployment.py imports its library itself (no tests/ helpers) and turns the --tiny flags
    into small job options."""
    spec = importlib.util.spec_from_file_location("bench_deployment", ROOT / "bench" / "bench_deployment.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--tiny", "--jobs", "4", "--kill-job", "2"])
    options = bench.job_options(args)
    assert (args.device, args.dtype, args.kill_job) == ("cpu", "float32", 2)
    assert (options.multiview.steps, options.reconstruction.steps, options.reconstruction.texture_size) == (
        2,
        2,
        256,
    )

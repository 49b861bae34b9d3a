"""Deployment bench: the four real services as compose runs them, N jobs back to back through the gateway.

Starts preprocess and the gateway on the CPU and the stage-1 / stage-2 services each pinned to a GPU with
``CUDA_VISIBLE_DEVICES`` (``--gpus 0,1``: one GPU each, as compose.yaml; ``--gpus 0``: both share GPU 0),
using the embedded launcher (``services.launcher.child_specs`` + ``services.supervisor.Supervisor``, which
also restarts a killed child). It waits for every health check to be SERVING, submits ``--jobs`` photos at
once (a synthetic RGBA person cut-out, or ``--image``), follows every job's event stream, and measures:

- per-job latency by stage (preprocess / stage 1 / stage 2, plus the waits between them) from the gateway's
  event timestamps: a stage runs from the moment its service starts working on the request (the time of its
  first progress event minus that event's ``elapsed_seconds``, so time spent in the service's queue counts as
  waiting, not as stage time) to its ``stage_completed`` event;
- throughput in jobs per minute (all jobs: first submit -> last finish; steady state: between finishes);
- how much stage 1 of job k+1 overlaps stage 2 of job k (seconds, and as a fraction of that stage-1 run);
- peak memory per GPU and per stage process (``nvidia-smi`` polled every 0.5 s; on ``--device cpu`` the
  peak resident memory of each stage process instead);
- a kill test: SIGKILL the stage-2 process while job ``--kill-job`` is in stage 2; the supervisor restarts
  it; every job must still succeed and the killed job's stage 1 must not have run again (gateway ``attempts``
  map: multiview == 1, reconstruction >= 2).

Prints a markdown table and writes it to ``--out`` (raw timings beside it as JSON). Exit 1 when a job failed
or the kill test did not hold.

Both stages on one GPU (``--gpus 0``): stage 2 yields the GPU to stage 1 (``services/common/gpu_share.py``,
set up by the launcher) unless ``--no-priority``. ``--compare-priority`` measures what that priority buys and
costs, on one start-up: a second stage 2 without ``--gpu-share-dir`` behind a second gateway serves the run
without priority. Each run first times a lone stage-1 request sent straight to stage 1, alone and while
stick-figure stage-2 requests (the realistic, compact occupancy of a person) run on the GPU, then the jobs
(their stage 2 gets the scattered occupancy of random stage-1 weights), and a last table sets the two side
by side (stage-1 seconds, jobs/min).

CPU dry run (tiny random checkpoints, few steps)::

    .venv/bin/python bench/bench_deployment.py --device cpu --tiny --out /tmp/deploy.md

GPU run (full size, random weights, ~8 GB written once to /tmp/ckpts and reused while the machine stays warm).
One device command (carry ``.whl``; --timeout bounds the bench so it reports before the 600 s limit)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH || exit; nvidia-smi -L; \
    [ -f /tmp/ckpts/RANDOM_WEIGHTS.json ] || python3 -m synchuman_cli ckpts make-random /tmp/ckpts \
    --dtype float16 --device cuda >$OUT/ckpts.log 2>&1 || { tail -30 $OUT/ckpts.log; exit 1; }; \
    python3 bench/bench_deployment.py --ckpts /tmp/ckpts --gpus 0 --jobs 8 --timeout 450 --simplify 0.95 \
    --out $OUT/deployment.md 2>$OUT/services.log; rc=$?; tail -25 $OUT/services.log; exit $rc

(Paste it as one line without the backslash-newlines. ``--gpus 0,1`` on the two-GPU machine; reduce the work
with ``--jobs``, ``--mv-steps``, ``--rec-steps``, ``--texture``, ``--bake-steps``, ``--visibility-views``.)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.endpoints import HEALTH_SERVICES, STAGE_SERVICES  # noqa: E402
from services.common.stage_io import blob_chunks, blob_header  # noqa: E402
from services.launcher import EmbeddedConfig, child_specs, free_port  # noqa: E402
from services.supervisor import ChildSpec, Supervisor, health_status  # noqa: E402
from synchuman.v1 import (  # noqa: E402
    common_pb2,
    reconstruction_pb2,
    reconstruction_pb2_grpc,
    stage1_pb2_grpc,
    stage2_pb2_grpc,
)

STAGES = {stage: name for name, stage in STAGE_SERVICES.items()}
TERMINAL = {
    reconstruction_pb2.JOB_STATE_SUCCEEDED,
    reconstruction_pb2.JOB_STATE_FAILED,
    reconstruction_pb2.JOB_STATE_CANCELLED,
}
GIB = 1024**3
#: Bytes per voxel in the stored "voxels.bin" (x, y, z as little-endian uint16, as on the wire).
VOXEL_BYTES = 6


# --- launching --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a run's jobs go: the gateway, and the stage-2 service behind it."""

    gateway: str
    stage2: str


def _set_option(argv: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    at = argv.index(flag)
    return (*argv[: at + 1], value, *argv[at + 2 :])


def _drop_option(argv: tuple[str, ...], flag: str) -> tuple[str, ...]:
    if flag not in argv:
        return argv
    at = argv.index(flag)
    return (*argv[:at], *argv[at + 2 :])


def without_priority_twin(specs: list[ChildSpec], config: EmbeddedConfig, data_dir: Path) -> list[ChildSpec]:
    """A second stage 2 that does not yield the GPU (no ``--gpu-share-dir``) and a second gateway in front of
    it, sharing preprocess and stage 1: the deployment without priority beside the one with it, so one
    start-up serves both runs (the idle stage 2 only holds its memory meanwhile)."""
    by_name = {spec.name: spec for spec in specs}
    stage2, gateway = by_name["stage2"], by_name["gateway"]
    stage2_address, gateway_address = (f"{config.host}:{free_port(config.host)}" for _ in range(2))
    stage2_argv = _set_option(_drop_option(stage2.argv, "--gpu-share-dir"), "--address", stage2_address)
    gateway_argv = gateway.argv
    for flag, value in (
        ("--address", gateway_address),
        ("--http", f"{config.host}:{free_port(config.host)}"),
        ("--stage2", stage2_address),
        ("--data-dir", str(data_dir)),
    ):
        gateway_argv = _set_option(gateway_argv, flag, value)
    return [
        dataclasses.replace(stage2, name="stage2-no-priority", argv=stage2_argv, address=stage2_address),
        dataclasses.replace(gateway, name="gateway-no-priority", argv=gateway_argv, address=gateway_address),
    ]


def launch(
    args: argparse.Namespace, ckpts: Path, data_dir: Path, ready_timeout_s: float, priority: bool, twin: bool
) -> tuple[Supervisor, EmbeddedConfig, dict[str, Route]]:
    """Start the four services as compose would: stages pinned to their GPU, preprocess/gateway on CPU;
    ``priority``: on one GPU, stage 2 yields the GPU to stage 1 (the launcher's ``share_gpu``); ``twin``: also
    :func:`without_priority_twin`. Returns the routes: ``"run"`` (``twin``: ``"stage-1 priority"`` and
    ``"no priority"``)."""
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if args.device != "cpu" and len(gpus) not in (1, 2):
        raise SystemExit("--gpus takes one GPU (shared by both stages) or two (stage 1, stage 2)")
    config = EmbeddedConfig.with_free_ports(
        share_gpu=priority and len(gpus) == 1,
        ckpts=ckpts,
        device=args.device,
        dtype=args.dtype,
        data_dir=data_dir / "jobs",
        log_level=args.log_level,
        stage_args=["--max-queue", str(max(8, args.jobs))],
        stage1_args=["--compile"] if args.stage1_compile else [],
    )
    visible = {"preprocess": "", "gateway": "", "stage1": "", "stage2": ""}
    if args.device != "cpu":
        visible["stage1"], visible["stage2"] = gpus[0], gpus[-1]
    specs = [
        dataclasses.replace(spec, env={**spec.env, "CUDA_VISIBLE_DEVICES": visible[spec.name]})
        for spec in child_specs(config)
    ]
    main_route = Route(config.address("gateway"), config.address("stage2"))
    routes = {"run": main_route}
    if twin:
        twins = without_priority_twin(specs, config, data_dir / "jobs-no-priority")
        specs += twins
        routes = {"no priority": Route(twins[1].address, twins[0].address), "stage-1 priority": main_route}
    supervisor = Supervisor(specs, stop_grace_s=args.stop_grace)
    supervisor.start()
    supervisor.run_in_background()
    if not supervisor.wait_ready(ready_timeout_s):
        reason = supervisor.failed or f"not all services SERVING within {ready_timeout_s:.0f} s"
        supervisor.stop()
        raise SystemExit(f"services did not start: {reason}")
    return supervisor, config, routes


# --- memory -----------------------------------------------------------------------------------------------


def pids_listening(address: str) -> list[int]:
    """PIDs whose command line has ``--address ADDRESS`` (the service, found again after a restart)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == b"--address" and b == address.encode() for a, b in zip(argv, argv[1:], strict=False)):
            found.append(int(entry.name))
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


class MemoryPoller:
    """Peak memory per GPU (``nvidia-smi``) and per stage process (GPU memory, or RSS on CPU), polled."""

    def __init__(self, addresses: dict[str, str], gpu: bool, interval_s: float = 0.5) -> None:
        self.addresses = addresses
        self.gpu = gpu
        self.interval_s = interval_s
        self.peak_gpu: dict[str, int] = {}
        self.peak_process: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory", daemon=True)

    def __enter__(self) -> MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _bump(self, table: dict[str, int], key: str, value: int) -> None:
        table[key] = max(table.get(key, 0), value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (OSError, subprocess.SubprocessError, ValueError):
                pass  # a transient nvidia-smi failure loses one sample
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        pids = {pid: name for name, address in self.addresses.items() for pid in pids_listening(address)}
        if not self.gpu:
            for pid, name in pids.items():
                self._bump(self.peak_process, name, rss_bytes(pid))
            return
        uuids = {}
        for index, uuid, used in _nvidia_smi("--query-gpu=index,uuid,memory.used"):
            uuids[uuid] = index
            self._bump(self.peak_gpu, f"GPU {index}", int(float(used)) << 20)
        for pid, used, uuid in _nvidia_smi("--query-compute-apps=pid,used_memory,gpu_uuid"):
            name = pids.get(int(pid))
            if name is not None:
                self._bump(self.peak_process, f"{name} (GPU {uuids.get(uuid, '?')})", int(float(used)) << 20)


# --- jobs -------------------------------------------------------------------------------------------------


@dataclass
class JobRecord:
    """What one job did: submit time, the gateway's events (wall-clock seconds), the final job."""

    index: int
    submitted: float
    job_id: str = ""
    #: (time, kind, stage, work start): for service progress events the wall-clock moment the service started
    #: working (event time - elapsed_seconds); None for other events and the gateway's own "start" marker.
    events: list[tuple[float, str, str, float | None]] = field(default_factory=list)
    final: reconstruction_pb2.Job | None = None
    error: str = ""

    def first(self, kind: str, stage: str) -> float | None:
        return next((t for t, k, s, _ in self.events if k == kind and s == stage), None)

    def last(self, kind: str, stage: str) -> float | None:
        return next((t for t, k, s, _ in reversed(self.events) if k == kind and s == stage), None)

    def span(self, stage: str) -> tuple[float, float] | None:
        """(start, end) of a stage's successful run: when its service started working on the request (after
        the last failed attempt), up to its ``stage_completed`` event."""
        end = self.first("completed", stage)
        if end is None:
            return None
        retried = [t for t, k, _, _ in self.events if k == "retrying" and t <= end]
        after = max(retried, default=-1.0)
        starts = [w for t, k, s, w in self.events if k == "progress" and s == stage and t >= after and w]
        return (max(after, starts[0]) if starts else end), end

    @property
    def finished(self) -> float | None:
        return self.first("finished", "")


def _seconds(stamp: object) -> float:
    return stamp.seconds + stamp.nanos * 1e-9  # type: ignore[attr-defined]


def job_options(args: argparse.Namespace) -> common_pb2.JobOptions:
    """Options of every job: only the flags given are set (the services' defaults apply otherwise)."""
    options = common_pb2.JobOptions()
    if args.mv_steps:
        options.multiview.steps = args.mv_steps
    if args.rec_steps:
        options.reconstruction.steps = args.rec_steps
    if args.texture:
        options.reconstruction.texture_size = args.texture
    if args.bake_steps:
        options.reconstruction.bake_steps = args.bake_steps
    if args.visibility_views:
        options.reconstruction.visibility_views = args.visibility_views
    if args.simplify:
        options.reconstruction.simplify_ratio = args.simplify
    return options


def upload(photo: bytes, options: common_pb2.JobOptions) -> Iterator[reconstruction_pb2.SubmitJobRequest]:
    """The SubmitJob stream: options + the photo's header, then its chunks."""
    start = reconstruction_pb2.SubmitJobStart(options=options, image=blob_header("input", "image/png", photo))
    yield reconstruction_pb2.SubmitJobRequest(start=start)
    for chunk in blob_chunks("input", photo):
        yield reconstruction_pb2.SubmitJobRequest(chunk=chunk)


def submit(
    stub: reconstruction_pb2_grpc.ReconstructionServiceStub,
    record: JobRecord,
    photo: bytes,
    options: common_pb2.JobOptions,
    deadline: float,
) -> None:
    """Submit one photo (retrying while the gateway says RESOURCE_EXHAUSTED/UNAVAILABLE)."""
    while True:
        try:
            reply = stub.SubmitJob(upload(photo, options), timeout=120)
            record.job_id = reply.job.id
            return
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) or (
                time.monotonic() > deadline
            ):
                raise
            time.sleep(1.0)


def watch(
    stub: reconstruction_pb2_grpc.ReconstructionServiceStub,
    record: JobRecord,
    deadline: float,
    on_event: object,
) -> None:
    """Follow one job's events to its end (resuming after gateway hiccups); fills ``record``."""
    sequence = 0
    state = reconstruction_pb2.JOB_STATE_QUEUED
    try:
        while state not in TERMINAL:
            try:
                for event in stub.WatchJob(
                    reconstruction_pb2.WatchJobRequest(job_id=record.job_id, after_sequence=sequence),
                    timeout=max(1.0, deadline - time.monotonic()),
                ):
                    sequence = event.sequence
                    state = event.state
                    kind = event.WhichOneof("event")
                    stage, work_start = "", None
                    if kind == "progress":
                        stage = STAGES.get(event.progress.stage, "?")
                        if event.progress.phase != "start":  # the gateway's dispatch marker
                            work_start = _seconds(event.time) - event.progress.elapsed_seconds
                    elif kind == "stage_completed":
                        kind, stage = "completed", STAGES.get(event.stage_completed, "?")
                    elif kind == "finished":
                        record.final = event.finished
                    record.events.append((_seconds(event.time), kind or "", stage, work_start))
                    on_event(record, kind, stage, work_start is not None)  # type: ignore[operator]
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        if record.final is None:
            record.final = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=record.job_id), timeout=30).job
    except grpc.RpcError as exc:
        record.error = f"{exc.code().name}: {exc.details()}"


class KillTest:
    """SIGKILLs stage 2 once, when the stage-2 service first reports work on job ``job_index`` (not when the
    gateway merely dispatches it, which may be while the job still waits in the service's queue); times the
    restart."""

    def __init__(self, supervisor: Supervisor, job_index: int, address: str, delay_s: float) -> None:
        self.supervisor = supervisor
        self.job_index = job_index
        self.address = address
        self.delay_s = delay_s
        self.killed_at: float | None = None
        self.killed_pid = 0
        self.serving_again_s: float | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def stop(self) -> None:
        """End the wait for stage 2's return (the bench is over)."""
        self._stopped.set()

    def on_event(self, record: JobRecord, kind: str, stage: str, working: bool) -> None:
        if record.index != self.job_index or kind != "progress" or stage != "stage2" or not working:
            return
        with self._lock:
            if self.killed_at is not None:
                return
            self.killed_at = -1.0
        threading.Thread(target=self._kill, name="kill-stage2", daemon=True).start()

    def _kill(self) -> None:
        time.sleep(self.delay_s)
        self.killed_pid = self.supervisor.kill_child("stage2")
        self.killed_at = time.time()
        print(
            f"kill test: SIGKILL stage2 (pid {self.killed_pid}) during job {self.job_index}", file=sys.stderr
        )
        while not self._stopped.is_set():
            if health_status(self.address, HEALTH_SERVICES["stage2"]) == 1:
                self.serving_again_s = time.time() - self.killed_at
                return
            self._stopped.wait(0.25)


def run_jobs(
    args: argparse.Namespace, gateway: str, photo: bytes, kill: KillTest | None, deadline: float
) -> list[JobRecord]:
    """Submit ``args.jobs`` photos back to back, watch them all concurrently, return their records.

    At ``deadline`` (``time.monotonic()``) the jobs still running are cancelled and recorded as unfinished.
    """
    options = job_options(args)
    records = [JobRecord(i + 1, 0.0) for i in range(args.jobs)]
    on_event = kill.on_event if kill else (lambda *_: None)
    with grpc.insecure_channel(gateway) as channel:
        stub = reconstruction_pb2_grpc.ReconstructionServiceStub(channel)
        watchers = []
        for record in records:
            record.submitted = time.time()
            submit(stub, record, photo, options, deadline)
            thread = threading.Thread(target=watch, args=(stub, record, deadline, on_event), daemon=True)
            thread.start()
            watchers.append(thread)
        for thread in watchers:
            thread.join()
        for record in records:
            if record.job_id and (record.final is None or record.final.state not in TERMINAL):
                try:
                    stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=record.job_id), timeout=10)
                except grpc.RpcError:
                    pass  # the summary reports the job as unfinished either way
    return records


# --- stage-1 priority on one GPU ------------------------------------------------------------------------


def _stage_metadata(config: EmbeddedConfig) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {config.stage_token}")]


def stage1_request_s(config: EmbeddedConfig, steps: int, job_id: str) -> float:
    """One stage-1 request sent straight to the stage-1 service (a lone job's stage 1; the framed person and
    crop of ``bench_stage_service``); returns the service's own seconds for it."""
    from bench_stage_service import stage1_inputs
    from stage_doubles import stage1_requests

    options = common_pb2.MultiviewOptions(steps=steps) if steps else None
    with grpc.insecure_channel(config.address("stage1")) as channel:
        stream = stage1_pb2_grpc.Stage1ServiceStub(channel).GenerateViews(
            stage1_requests(stage1_inputs(), options, job_id=job_id),
            timeout=600,
            metadata=_stage_metadata(config),
        )
        for message in stream:
            if message.WhichOneof("payload") == "result":
                return float(message.result.seconds)
    raise RuntimeError(f"{job_id}: stage 1 sent no result")


class StickFigureStage2:
    """Realistic stage-2 work on the GPU: requests on the human-shaped voxel set (the shell of a capsule stick
    figure, ``bench_stage2_models.human_occupancy``; a person's stage 1 gives such a compact set, random
    stage-1 weights a scattered one) sent straight to the stage-2 service back to back, service defaults,
    until :meth:`stop` cancels the one running. ``sampling`` is set at the first sampler step."""

    def __init__(self, config: EmbeddedConfig, address: str, voxels: int = 20000) -> None:
        from bench_stage_service import stage2_inputs

        self.config = config
        self.address = address
        self.inputs = stage2_inputs(voxels)
        self.sampling = threading.Event()
        self._stopped = threading.Event()
        self._call: object = None
        self._thread = threading.Thread(target=self._loop, name="stick-figure-stage2", daemon=True)

    def __enter__(self) -> StickFigureStage2:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()  # type: ignore[attr-defined]
        self._thread.join(30)

    def _loop(self) -> None:
        from stage_doubles import stage2_requests

        blobs, structure = self.inputs
        with grpc.insecure_channel(self.address) as channel:
            stub = stage2_pb2_grpc.Stage2ServiceStub(channel)
            number = 0
            while not self._stopped.is_set():
                number += 1
                self._call = stub.Reconstruct(
                    stage2_requests(blobs, structure, job_id=f"stick-figure-{number}"),
                    timeout=600,
                    metadata=_stage_metadata(self.config),
                )
                try:
                    for message in self._call:  # type: ignore[attr-defined]
                        kind = message.WhichOneof("payload")
                        if kind == "progress" and message.progress.phase == "sampling":
                            self.sampling.set()
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.CANCELLED:
                        print(f"stick-figure stage 2: {exc.code().name}: {exc.details()}", file=sys.stderr)
                        self.sampling.set()  # do not leave the bench waiting
                        return


def stage1_interference(config: EmbeddedConfig, stage2_address: str, steps: int) -> dict:
    """A lone stage-1 request's seconds alone, then while stick-figure stage-2 requests run on the same GPU
    (at ``stage2_address``; stage 1 sent once stage 2 samples)."""
    alone = stage1_request_s(config, steps, "lone-stage1-alone")
    with StickFigureStage2(config, stage2_address) as stage2:
        if not stage2.sampling.wait(120):
            raise RuntimeError("the stick-figure stage-2 request did not start sampling within 120 s")
        during = stage1_request_s(config, steps, "lone-stage1-during-stage2")
    return {"alone_s": alone, "during_stage2_s": during}


def stage1_in_burst(result: dict) -> dict:
    """Stage-1 seconds in the jobs run: job 1's (stage 2 idle) and the median of those whose stage-1 run had
    stage 2 working (on any job) for at least half of it."""
    stage2_spans = [j["stage2_span"] for j in result["jobs"] if j["stage2_span"]]
    overlapped = []
    for j in result["jobs"][1:]:
        span = j["stage1_span"]
        if not span or span[1] <= span[0]:
            continue
        busy = sum(max(0.0, min(span[1], b[1]) - max(span[0], b[0])) for b in stage2_spans)
        if busy >= 0.5 * (span[1] - span[0]):
            overlapped.append(j["stage1_s"])
    return {
        "first_s": result["jobs"][0]["stage1_s"] if result["jobs"] else None,
        "overlapped_median_s": statistics.median(overlapped) if overlapped else None,
        "overlapped_jobs": len(overlapped),
    }


def priority_markdown(modes: dict[str, dict], steps_label: str) -> str:
    """The comparison table: stage-1 seconds and jobs/min without and with stage 2 yielding to stage 1."""
    names = list(modes)

    def row(label: str, cell: object) -> str:
        return f"| {label} | " + " | ".join(cell(modes[n]) for n in names) + " |"  # type: ignore[operator]

    def slower(value: float | None, base: float | None) -> str:
        if value is None or not base:
            return "-"
        return f"{value:.2f} s ({value / base - 1:+.0%})"

    lines = [
        "| one GPU, both stages | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row(f"lone stage-1 request alone ({steps_label}; direct call, service seconds)",
            lambda m: _f(m["interference"]["alone_s"], 2) + " s"),
        row("same, while stick-figure stage-2 requests run (**realistic** occupancy, service defaults)",
            lambda m: slower(m["interference"]["during_stage2_s"], m["interference"]["alone_s"])),
        row("jobs run: stage 1 of job 1 (stage 2 idle)", lambda m: _f(m["burst"]["first_s"], 2) + " s"),
        row("jobs run: median stage 1 of jobs with stage 2 working >= half of it (**random-weight** stage 2)",
            lambda m: slower(m["burst"]["overlapped_median_s"], m["interference"]["alone_s"])
            + f" [{m['burst']['overlapped_jobs']} jobs]"),
        row("jobs run: median stage 2 (random weights)", lambda m: _f(m["stage2_median_s"]) + " s"),
        row("jobs run: jobs succeeded", lambda m: "{jobs_succeeded} / {jobs}".format(**m["summary"])),
        row("jobs run: wall, first submit -> last finish", lambda m: _f(m["summary"]["wall_s"]) + " s"),
        row("jobs run: throughput, all jobs / steady state", lambda m: (
            f"{_f(m['summary']['throughput_jobs_per_min'], 2)} / {_f(m['summary']['steady_jobs_per_min'], 2)}"
            " jobs/min")),
        row("services SERVING after", lambda m: _f(m["startup_s"]) + " s"),
    ]
    return "\n".join(lines) + "\n"


# --- analysis ---------------------------------------------------------------------------------------------


def analyse(records: list[JobRecord]) -> dict:
    """Per-job stage times, throughput and stage-1(k+1) / stage-2(k) overlap from the job records."""
    jobs = []
    for r in records:
        spans = {s: r.span(s) for s in ("preprocess", "stage1", "stage2")}
        final = r.final
        row = {
            "job": r.index,
            "id": r.job_id,
            "state": reconstruction_pb2.JobState.Name(final.state) if final else f"ERROR {r.error}",
            "attempts": dict(final.attempts) if final else {},
            "latency_s": (r.finished - r.submitted) if r.finished else None,
            "voxels": next(
                (a.blob.size_bytes // VOXEL_BYTES for a in final.artifacts if a.blob.name == "voxels.bin"),
                None,
            )
            if final
            else None,
        }
        previous_end = r.submitted
        for stage, span in spans.items():
            row[f"{stage}_s"] = (span[1] - span[0]) if span else None
            row[f"{stage}_wait_s"] = (span[0] - previous_end) if span else None
            row[f"{stage}_span"] = span
            previous_end = span[1] if span else previous_end
        jobs.append(row)
    overlaps = []
    for a, b in zip(jobs, jobs[1:], strict=False):
        s2, s1 = a["stage2_span"], b["stage1_span"]
        if not (s2 and s1):
            continue
        seconds = max(0.0, min(s2[1], s1[1]) - max(s2[0], s1[0]))
        overlaps.append(
            {
                "pair": f"{b['job']}/{a['job']}",
                "seconds": seconds,
                "fraction_of_stage1": seconds / max(1e-9, s1[1] - s1[0]),
            }
        )
    # Pipelining as a whole: how much of stage 1's busy time had stage 2 busy too (on any job).
    stage1_busy = [j["stage1_span"] for j in jobs if j["stage1_span"]]
    stage2_busy = [j["stage2_span"] for j in jobs if j["stage2_span"]]
    concurrent = sum(max(0.0, min(a[1], b[1]) - max(a[0], b[0])) for a in stage1_busy for b in stage2_busy)
    stage1_total = sum(b - a for a, b in stage1_busy)
    finishes = sorted(r.finished for r in records if r.finished)
    first_submit = min(r.submitted for r in records)
    summary = {
        "jobs_succeeded": sum(j["state"] == "JOB_STATE_SUCCEEDED" for j in jobs),
        "jobs": len(jobs),
        "wall_s": (finishes[-1] - first_submit) if finishes else None,
        "throughput_jobs_per_min": (60 * len(finishes) / (finishes[-1] - first_submit)) if finishes else None,
        "steady_jobs_per_min": (60 * (len(finishes) - 1) / (finishes[-1] - finishes[0]))
        if len(finishes) > 1 and finishes[-1] > finishes[0]
        else None,
        "overlap_s_total": sum(o["seconds"] for o in overlaps),
        "overlap_fraction_mean": statistics.fmean(o["fraction_of_stage1"] for o in overlaps)
        if overlaps
        else 0.0,
        "stage1_busy_s": stage1_total,
        "stage1_concurrent_with_stage2_s": concurrent,
    }
    return {"jobs": jobs, "overlaps": overlaps, "summary": summary}


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict, meta: dict) -> str:
    """The report: setup line, per-job table, overlap table, summary, memory and the kill test."""
    lines = [
        f"Setup: {meta['setup']}",
        "",
        "| job | state | latency s | preprocess s | wait s | stage 1 s | wait s | stage 2 s | voxels "
        "| attempts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j in result["jobs"]:
        attempts = " ".join(f"{k}={v}" for k, v in sorted(j["attempts"].items()))
        lines.append(
            f"| {j['job']} | {j['state'].removeprefix('JOB_STATE_')} | {_f(j['latency_s'])} | "
            f"{_f(j['preprocess_s'], 2)} | {_f(j['stage1_wait_s'])} | {_f(j['stage1_s'])} | "
            f"{_f(j['stage2_wait_s'])} | {_f(j['stage2_s'])} | {j['voxels'] or '-'} | {attempts} |"
        )
    times = [j for j in result["jobs"] if j["stage1_s"] is not None and j["stage2_s"] is not None]
    if times:
        lines.append(
            f"| median | | {_f(statistics.median(j['latency_s'] for j in times if j['latency_s']))} | "
            f"{_f(statistics.median(j['preprocess_s'] or 0 for j in times), 2)} | | "
            f"{_f(statistics.median(j['stage1_s'] for j in times))} | | "
            f"{_f(statistics.median(j['stage2_s'] for j in times))} | | |"
        )
    s = result["summary"]
    concurrent, busy = s["stage1_concurrent_with_stage2_s"], s["stage1_busy_s"]
    lines += [
        "",
        "| overlap stage 1 (job k+1) with stage 2 (job k) | seconds | fraction of that stage 1 |",
        "|---|---|---|",
    ]
    lines += [
        f"| {o['pair']} | {o['seconds']:.1f} | {o['fraction_of_stage1']:.0%} |" for o in result["overlaps"]
    ]
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| jobs succeeded | {s['jobs_succeeded']} / {s['jobs']} |",
        f"| wall time, first submit -> last finish | {_f(s['wall_s'])} s |",
        f"| throughput (all jobs) | {_f(s['throughput_jobs_per_min'], 2)} jobs/min |",
        f"| throughput (steady state, between finishes) | {_f(s['steady_jobs_per_min'], 2)} jobs/min |",
        f"| overlap stage1(k+1) / stage2(k), total | {s['overlap_s_total']:.1f} s "
        f"(mean {s['overlap_fraction_mean']:.0%} of stage 1) |",
        f"| stage-1 work done while stage 2 worked on any job | {concurrent:.1f} s of {busy:.1f} s "
        f"({concurrent / max(1e-9, busy):.0%}) |",
    ]
    for name, value in sorted(meta["peak_gpu"].items()):
        lines.append(f"| peak memory {name} (nvidia-smi, whole GPU) | {value / GIB:.2f} GiB |")
    for name, value in sorted(meta["peak_process"].items()):
        what = "GPU memory" if meta["gpu"] else "resident memory"
        lines.append(f"| peak {what} {name} | {value / GIB:.2f} GiB |")
    kill = meta.get("kill")
    if kill:
        lines.append(f"| kill test | {kill['verdict']} |")
    return "\n".join(lines) + "\n"


def kill_verdict(kill: KillTest, records: list[JobRecord]) -> dict:
    """Did the kill happen during stage 2 of the chosen job, and did every job survive without re-running
    stage 1 of the killed job?"""
    record = records[kill.job_index - 1]
    attempts = dict(record.final.attempts) if record.final else {}
    s1_again = (
        kill.killed_at is not None
        and kill.killed_at > 0
        and any(k == "progress" and s == "stage1" and t > kill.killed_at for t, k, s, _ in record.events)
    )
    all_ok = all(
        r.final is not None and r.final.state == reconstruction_pb2.JOB_STATE_SUCCEEDED for r in records
    )
    ok = (
        bool(kill.killed_pid)
        and all_ok
        and attempts.get("multiview", 0) == 1
        and not s1_again
        and (attempts.get("reconstruction", 0) >= 2)
    )
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: stage2 pid {kill.killed_pid or '-'} killed in job {kill.job_index}; "
        f"SERVING again after {_f(kill.serving_again_s)} s; job {kill.job_index} attempts "
        f"{attempts or '-'}; stage 1 re-run: {'yes' if s1_again else 'no'}; all jobs succeeded: {all_ok}"
    )
    return {"ok": ok, "verdict": verdict, "serving_again_s": kill.serving_again_s, "attempts": attempts}


# --- main -------------------------------------------------------------------------------------------------


def synthetic_photo(path: str | None) -> bytes:
    """The bytes of ``--image``, or a synthetic RGBA person cut-out (PNG)."""
    if path:
        return Path(path).read_bytes()
    from PIL import Image

    from synchuman_cli.commands.selftest import synthetic_person

    buffer = io.BytesIO()
    Image.fromarray(synthetic_person(), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpts", type=Path, help="checkpoint root (full-size random: `synchuman ckpts make-random`)"
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="write tiny random checkpoints to a temporary folder (CPU dry run) and use few steps",
    )
    p.add_argument(
        "--gpus", default="0", help="'0': both stages share GPU 0; '0,1': stage 1 on 0, stage 2 on 1"
    )
    p.add_argument("--device", help="stage device: cuda (default) or cpu (default with --tiny)")
    p.add_argument("--dtype", default="float16", help="stage compute dtype (float16, bfloat16, float32)")
    p.add_argument("--jobs", type=int, default=8, help="jobs submitted back to back (default 8)")
    p.add_argument("--image", help="input photo (default: a synthetic RGBA person cut-out)")
    p.add_argument("--mv-steps", type=int, default=0, help="stage-1 steps (default: service default, 50)")
    p.add_argument("--rec-steps", type=int, default=0, help="stage-2 steps (default: service default, 25)")
    p.add_argument("--texture", type=int, default=0, help="texture size (default: service default, 1024)")
    p.add_argument("--bake-steps", type=int, default=0, help="texture bake steps (default: service default)")
    p.add_argument("--visibility-views", type=int, default=0, help="visibility views (default: service's)")
    p.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        help="fraction of faces removed before texturing (service default 0.7). Random weights give a noisy "
        "~1.5M-face mesh; 0.95 leaves ~75k faces, the size of a real person's mesh after the default",
    )
    p.add_argument(
        "--kill-job",
        type=int,
        default=3,
        help="SIGKILL stage 2 while this job (1-based) is in stage 2; 0 = no kill test (default 3)",
    )
    p.add_argument(
        "--stage1-compile", action="store_true", help="start stage 1 with --compile (torch.compile warm-up)"
    )
    p.add_argument(
        "--no-priority",
        action="store_true",
        help="one GPU: stage 2 does not yield the GPU to stage 1 (as before services/common/gpu_share.py)",
    )
    p.add_argument(
        "--compare-priority",
        action="store_true",
        help="one GPU: run the deployment twice, stage 2 not yielding then yielding to stage 1; each run "
        "first times a lone stage-1 request alone and beside stick-figure stage-2 requests, then the jobs; "
        "ends with a comparison table (--timeout applies to each run)",
    )
    p.add_argument("--kill-delay", type=float, default=0.5, help="seconds after its first stage-2 event")
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="overall budget in seconds from start-up on; unfinished jobs are then cancelled and reported",
    )
    p.add_argument("--stop-grace", type=float, default=15.0, help="seconds the services get to stop")
    p.add_argument("--ready-timeout", type=float, default=1200.0, help="seconds to wait for SERVING")
    p.add_argument("--log-level", default="WARNING", help="log level of the services (stderr)")
    p.add_argument("--out", type=Path, help="write the markdown table here (and raw timings to .json)")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.device == "cpu":
        args.dtype = "float32"
    if args.tiny:
        args.mv_steps = args.mv_steps or 2
        args.rec_steps = args.rec_steps or 2
        args.texture = args.texture or 256
        args.bake_steps = args.bake_steps or 10
        args.visibility_views = args.visibility_views or 16
    if not args.ckpts and not args.tiny:
        p.error("give --ckpts DIR (e.g. written by `synchuman ckpts make-random DIR`) or --tiny")
    if args.compare_priority:
        args.kill_job = 0  # the comparison times undisturbed runs
    if not 0 <= args.kill_job <= args.jobs:
        p.error(f"--kill-job must be between 0 and --jobs ({args.jobs})")
    if (args.compare_priority or args.no_priority) and "," in args.gpus:
        p.error("--compare-priority / --no-priority are about both stages on one GPU: give --gpus 0")
    if args.compare_priority and args.no_priority:
        p.error("--compare-priority runs both ways; drop --no-priority")
    return args


def report_run(
    args: argparse.Namespace,
    ckpts: Path,
    records: list[JobRecord],
    setup: str,
    memory: MemoryPoller,
    kill: KillTest | None,
    interference: dict,
) -> dict:
    """The analysis of one run of jobs, its markdown and the figures of the priority comparison."""
    result = analyse(records)
    options = text_format.MessageToString(job_options(args), as_one_line=True) or "service defaults"
    meta = {
        "setup": f"{args.jobs} jobs, {setup}, dtype {args.dtype}, ckpts {ckpts}"
        f"{' (tiny)' if args.tiny else ''}, options {{{options}}}",
        "gpu": args.device != "cpu",
        "peak_gpu": memory.peak_gpu,
        "peak_process": memory.peak_process,
    }
    if kill:
        meta["kill"] = kill_verdict(kill, records)
    stage2_times = [j["stage2_s"] for j in result["jobs"] if j["stage2_s"] is not None]
    failed = result["summary"]["jobs_succeeded"] != result["summary"]["jobs"] or bool(
        kill and not meta["kill"]["ok"]
    )
    return {
        **result,
        "meta": meta,
        "markdown": markdown(result, meta),
        "interference": interference,
        "burst": stage1_in_burst(result),
        "stage2_median_s": statistics.median(stage2_times) if stage2_times else None,
        "failed": failed,
    }


def run_deployment(args: argparse.Namespace, ckpts: Path, work: Path, photo: bytes) -> dict[str, dict]:
    """Start the deployment, run the jobs (``--compare-priority``: first a lone stage-1 request alone and
    beside stick-figure stage 2, then the jobs, once through each route), stop it; one report per run."""
    gpu = args.device != "cpu"
    started = time.monotonic()
    deadline = started + args.timeout
    supervisor, config, routes = launch(
        args, ckpts, work, min(args.ready_timeout, args.timeout), not args.no_priority, args.compare_priority
    )
    startup_s = time.monotonic() - started
    gpus = args.gpus.split(",")
    placement = f"stage 1 on GPU {gpus[0]}, stage 2 on GPU {gpus[-1]}" if gpu else "all on CPU"
    if args.compare_priority:
        placement += " (one start-up for both runs: a second stage 2 without --gpu-share-dir, own gateway)"
    reports = {}
    kill: KillTest | None = None
    try:
        addresses = {name: config.address(name) for name in ("stage1", "stage2")}
        if args.compare_priority:
            addresses.update({f"stage2 ({name})": route.stage2 for name, route in routes.items()})
        with MemoryPoller(addresses, gpu) as memory:
            for number, (name, route) in enumerate(routes.items()):
                # the first of two runs gets 45 % of the time left; the second gets the rest
                left = deadline - time.monotonic()
                run_deadline = deadline - (0.55 * left if number < len(routes) - 1 else 0.0)
                interference = {}
                if args.compare_priority:
                    interference = stage1_interference(config, route.stage2, args.mv_steps)
                    print(f"{name}: lone stage-1 request {interference}", file=sys.stderr)
                kill = (
                    KillTest(supervisor, args.kill_job, config.address("stage2"), args.kill_delay)
                    if args.kill_job
                    else None
                )
                records = run_jobs(args, route.gateway, photo, kill, run_deadline)
                if kill:
                    kill.stop()
                yields = name == "stage-1 priority" or (name == "run" and not args.no_priority)
                shared = ", stage 2 yields the GPU to stage 1" if yields else ", stage 2 does not yield"
                if not gpu or "," in args.gpus:
                    shared = ""
                setup = f"{placement}{shared}, services SERVING after {startup_s:.0f} s"
                reports[name] = report_run(args, ckpts, records, setup, memory, kill, interference)
                reports[name]["startup_s"] = startup_s
    finally:
        if kill:
            kill.stop()
        supervisor.stop()
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    ckpts = args.ckpts
    if ckpts is None:
        from synchuman.checkpoints.tiny import write_tiny_tree

        ckpts = work / "ckpts"
        write_tiny_tree(ckpts)
    photo = synthetic_photo(args.image)
    reports = run_deployment(args, ckpts, work, photo)
    if args.compare_priority:
        steps = f"{args.mv_steps} steps" if args.mv_steps else "service default steps"
        table = "\n".join(
            [f"#### {name}\n\n{report['markdown']}" for name, report in reports.items()]
            + [priority_markdown(reports, steps)]
        )
    else:
        table = reports["run"]["markdown"]
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        raw = {name: {k: v for k, v in report.items() if k != "markdown"} for name, report in reports.items()}
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if any(report["failed"] for report in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak the embedded system: N jobs with random cancels and deletes and one stage restart.

Starts the four services (``services/launcher.py``, tiny random checkpoints, CPU) and keeps ``--in-flight``
jobs submitted over gRPC, with small options; a random ``--cancel-fraction`` of them is cancelled a few
seconds after submission and a random ``--delete-fraction`` of the finished ones deleted (``DeleteJob``). When
half of the jobs have ended, stage 2 is killed (SIGKILL); the supervisor restarts it and the gateway retries.
Every service's resident memory (``VmRSS``) is sampled as jobs end.

Checks, each failing the run (exit status 1):

* no job lost: every submitted job reaches SUCCEEDED or CANCELLED (a FAILED job is listed with its error);
* nothing left behind: no file of a deleted job remains under the gateway's data folder;
* flat memory (with at least ``--warm-up`` + 20 jobs): each service process's median RSS over its last 10
  ended jobs is within ``--max-rss-growth`` of its median over the 10 jobs after the warm-up (a restarted
  stage 2 is measured from its own warm-up).

Usage::

    .venv/bin/python bench/soak.py --jobs 200 --out bench/soak.json

Prints a summary (also written as JSON with ``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.launcher import EmbeddedConfig, start_embedded  # noqa: E402
from services.supervisor import Supervisor  # noqa: E402
from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc  # noqa: E402

SERVICES = ("preprocess", "stage1", "stage2", "gateway")
#: RSS samples (one per ended job) whose median is compared at the start and the end of a process's run.
WINDOW = 10
TERMINAL = (
    reconstruction_pb2.JOB_STATE_SUCCEEDED,
    reconstruction_pb2.JOB_STATE_FAILED,
    reconstruction_pb2.JOB_STATE_CANCELLED,
)


def small_options() -> common_pb2.JobOptions:
    """Few steps and a small bake: a job takes seconds of CPU on the tiny checkpoints."""
    options = common_pb2.JobOptions()
    options.multiview.steps = 1
    options.reconstruction.steps = 1
    options.reconstruction.texture_size = 256
    options.reconstruction.bake_steps = 5
    options.reconstruction.visibility_views = 8
    options.reconstruction.simplify_ratio = 0.95
    return options


def person_photo() -> bytes:
    """A 384x512 RGBA photo whose alpha is a standing figure (the mask comes from the alpha channel)."""
    height, width = 512, 384
    y, x = np.mgrid[:height, :width]
    body = ((x - width / 2) / 70) ** 2 + ((y - 300) / 190) ** 2 < 1
    head = ((x - width / 2) / 45) ** 2 + ((y - 95) / 55) ** 2 < 1
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = np.stack([x % 256, y % 256, (x + y) % 256], -1)
    rgba[..., 3] = np.where(body | head, 255, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of ``pid`` in MiB (None when it is not running)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class MemorySeries:
    """RSS samples of one process of a service: (jobs ended so far, MiB)."""

    service: str
    pid: int
    samples: list[tuple[int, float]] = field(default_factory=list)

    def growth(self, warm_up: int) -> tuple[float, float, float] | None:
        """(median RSS of this process's first ``WINDOW`` samples after ``warm_up`` jobs, median of its last
        ``WINDOW`` samples, relative growth); None when the process saw fewer than ``warm_up`` + 2 ``WINDOW``
        jobs.

        Samples are taken as jobs end, while others are in flight and hold their buffers, so single samples
        swing by ~10-20 % (stage 2: a request's meshes and textures); medians of windows show a trend, not
        where in a request the sample fell."""
        first = self.samples[0][0]
        warm = [mib for ended, mib in self.samples if ended - first >= warm_up]
        if len(warm) < 2 * WINDOW:
            return None
        start, end = statistics.median(warm[:WINDOW]), statistics.median(warm[-WINDOW:])
        return start, end, end / start - 1


@dataclass
class SoakResult:
    """What the soak saw (see the module docstring)."""

    jobs: int
    seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    deleted: int = 0
    left_behind: list[str] = field(default_factory=list)
    restarted: str = ""
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Soak:
    """One soak run against a started embedded system."""

    def __init__(self, config: EmbeddedConfig, supervisor: Supervisor, args: argparse.Namespace) -> None:
        self.config = config
        self.supervisor = supervisor
        self.args = args
        self.random = random.Random(args.seed)
        self.stub = reconstruction_pb2_grpc.ReconstructionServiceStub(
            grpc.insecure_channel(config.address("gateway"))
        )
        self.photo = person_photo()
        self.result = SoakResult(jobs=args.jobs)
        self.series: list[MemorySeries] = []
        self.ended = 0

    def submit(self) -> str:
        def upload():
            from services.common.stage_io import blob_chunks, blob_header

            header = blob_header("input", "image/png", self.photo)
            yield reconstruction_pb2.SubmitJobRequest(
                start=reconstruction_pb2.SubmitJobStart(options=small_options(), image=header)
            )
            for chunk in blob_chunks("input", self.photo):
                yield reconstruction_pb2.SubmitJobRequest(chunk=chunk)

        while True:
            try:
                return self.stub.SubmitJob(upload(), timeout=60).job.id
            except grpc.RpcError as error:  # UNAVAILABLE while a stage restarts: the client retries
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
                time.sleep(1.0)

    def cancel_later(self, job_id: str) -> None:
        delay = self.random.uniform(0.5, 8.0)

        def cancel() -> None:
            time.sleep(delay)
            try:
                self.stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job_id), timeout=30)
            except grpc.RpcError as error:  # deleted meanwhile: nothing to cancel
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        threading.Thread(target=cancel, daemon=True).start()

    def sample_memory(self) -> None:
        for service in SERVICES:
            pid = self.supervisor.pid(service)
            mib = rss_mib(pid)
            if pid is None or mib is None:
                continue
            series = next((s for s in self.series if s.pid == pid), None)
            if series is None:
                series = MemorySeries(service, pid)
                self.series.append(series)
            series.samples.append((self.ended, mib))

    def finish(self, job: reconstruction_pb2.Job) -> None:
        self.ended += 1
        state = reconstruction_pb2.JobState.Name(job.state)
        self.result.states[state] = self.result.states.get(state, 0) + 1
        if job.state == reconstruction_pb2.JOB_STATE_FAILED:
            self.result.failed[job.id] = job.error.message
        if self.random.random() < self.args.delete_fraction:
            self.stub.DeleteJob(reconstruction_pb2.DeleteJobRequest(job_id=job.id), timeout=30)
            self.result.deleted += 1
            data = Path(self.config.data_dir or ".")
            self.result.left_behind += [str(p) for p in data.rglob(f"*{job.id}*")]
        if self.ended == self.args.jobs // 2 and not self.result.restarted:
            pid = self.supervisor.kill_child("stage2")
            self.result.restarted = f"stage2 (pid {pid}) killed after {self.ended} jobs"
        self.sample_memory()
        if self.ended % 10 == 0:
            rss = {series.service: series.samples[-1][1] for series in self.series}
            print(f"{self.ended} jobs ended {self.result.states}; RSS MiB {rss}", file=sys.stderr, flush=True)

    def run(self) -> SoakResult:
        started = time.monotonic()
        running: dict[str, float] = {}
        submitted = 0
        deadline = started + self.args.max_minutes * 60
        self.sample_memory()
        while (submitted < self.args.jobs or running) and time.monotonic() < deadline:
            while submitted < self.args.jobs and len(running) < self.args.in_flight:
                job_id = self.submit()
                submitted += 1
                running[job_id] = time.monotonic()
                if self.random.random() < self.args.cancel_fraction:
                    self.cancel_later(job_id)
            time.sleep(0.5)
            for job_id in list(running):
                job = self.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=30).job
                if job.state in TERMINAL:
                    del running[job_id]
                    self.finish(job)
        self.result.lost = sorted(running) + [f"never submitted: {self.args.jobs - submitted}"] * (
            submitted < self.args.jobs
        )
        self.result.seconds = round(time.monotonic() - started, 1)
        self.judge()
        return self.result

    def judge(self) -> None:
        result = self.result
        if result.lost:
            result.problems.append(f"{len(result.lost)} jobs did not end: {result.lost[:5]}")
        if result.failed:
            result.problems.append(f"{len(result.failed)} jobs failed: {list(result.failed.values())[:3]}")
        if result.left_behind:
            result.problems.append(f"files of deleted jobs left: {result.left_behind[:5]}")
        for series in self.series:
            growth = series.growth(self.args.warm_up)
            key = f"{series.service} (pid {series.pid})"
            if growth is None:  # too few jobs in this process to judge: its first and last sample only
                jobs = series.samples[-1][0] - series.samples[0][0]
                first, last = series.samples[0][1], series.samples[-1][1]
                result.memory[key] = {"first_mib": round(first, 1), "end_mib": round(last, 1), "jobs": jobs}
                continue
            warm, end, relative = growth
            result.memory[key] = {
                "warm_median_mib": round(warm, 1),
                "end_median_mib": round(end, 1),
                "growth": round(relative, 4),
                "min_mib": round(min(mib for _, mib in series.samples), 1),
                "max_mib": round(max(mib for _, mib in series.samples), 1),
                "samples": [(ended, round(mib, 1)) for ended, mib in series.samples],
            }
            if relative > self.args.max_rss_growth:
                result.problems.append(f"{key}: RSS {warm:.0f} -> {end:.0f} MiB (+{relative:.0%})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs to run (default 200)")
    parser.add_argument("--in-flight", type=int, default=3, help="jobs submitted at a time (default 3)")
    parser.add_argument("--cancel-fraction", type=float, default=0.1)
    parser.add_argument("--delete-fraction", type=float, default=0.2)
    parser.add_argument("--warm-up", type=int, default=10, help="jobs before the RSS baseline")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed RSS growth (0.10)")
    parser.add_argument("--max-minutes", type=float, default=240.0, help="give up after (default 240)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="checkpoints and job data (default: temporary)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> SoakResult:
    """Run the soak; returns the result (``problems`` empty when every check passed)."""
    args = parse_args(argv)
    from synchuman.checkpoints.tiny import write_tiny_tree

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="synchuman-soak-"))
    if not (work / "ckpts").exists():
        write_tiny_tree(work / "ckpts")
    config = EmbeddedConfig.with_free_ports(
        ckpts=work / "ckpts",
        device="cpu",
        dtype="float32",
        data_dir=work / "jobs",
        log_level="WARNING",
        stage_args=["--grace", "2"],
        env={"OMP_NUM_THREADS": "1"},
    )
    # SIGTERM ends the run like Ctrl-C, so the services are stopped too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    supervisor = start_embedded(config, ready_timeout_s=600)
    try:
        result = Soak(config, supervisor, args).run()
    finally:
        supervisor.stop()
    text = json.dumps(asdict(result), indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.exit(1 if main().problems else 0)

"""The GPU turn under a burst, simulated on the CPU with the real locks (issue 25, item 4).

Stage 1 and stage 2 are two worker threads using the services' own classes (``TurnHoldingBackend`` around a
stage-1 request, ``Stage2PipelineBackend`` around a stage-2 pipeline, the flocks of
``services/common/gpu_share.py``); every request *sleeps* for its phases' measured seconds divided by
``--scale``, so what is simulated is the scheduling alone: no GPU contention (a real stage 2 running beside
stage 1 slows both), no hand-off time. All jobs are submitted at t = 0; stage 1 runs them in order, each goes
to stage 2 when its stage 1 ends. Phase seconds (H100, bench/RESULTS.md issue 25): stage 1 13.5 s; stage 2 on
the noisy mesh (``--mesh noisy``): GPU condition + sampling + features + decode 7.7, CPU decimate 10.4, GPU
visibility 4.8, CPU cut + fill 4.7 and atlas 5.5, GPU renders + bake 3.0, CPU export 1.4; on the realistic
body (``--mesh realistic``): GPU models 1.2, CPU decimate 0.3, GPU visibility 0.8, CPU cut + fill 1.2 and
atlas 1.4, GPU renders + bake 0.9, CPU export 0.3.

Prints, in real seconds (simulated x ``--scale``): each job's latency, the completion order, jobs/min, the
lone job's latency (its stage 1 + stage 2 with nothing else running) and the issue's two targets: first
job <= 1.5 x lone, jobs/min >= 60 / (stage 1 + stage-2 GPU phases). Commands (the second with the GPU turn of
an older commit)::

    python bench/bench_gpu_share_sim.py --jobs 8 --mesh noisy
    mkdir -p /tmp/gs_before && git archive 17d00fd^ services | tar -x -C /tmp/gs_before
    python bench/bench_gpu_share_sim.py --jobs 8 --mesh realistic --code-dir=/tmp/gs_before
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --code-dir=DIR: a tree whose services/ (e.g. an older gpu_share.py) is imported instead of this checkout's
_CODE_DIR = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--code-dir=")), None)
sys.path[:0] = [p for p in (_CODE_DIR, str(ROOT)) if p]

from services.common.gpu_share import GpuTurn, TurnHoldingBackend  # noqa: E402
from services.stage2.backend import HOST_PHASES, Stage2PipelineBackend  # noqa: E402

STAGE1_S = 13.5
#: (phase, seconds, check points in it); the phase names are the pipeline's (HOST_PHASES run on the CPU)
MESHES = {
    "noisy": (
        ("sampling", 7.7, 25),
        ("decimate", 10.4, 1),
        ("visibility", 4.8, 16),
        ("cut_fill", 4.7, 1),
        ("uv_atlas", 5.5, 1),
        ("bake", 3.0, 20),
        ("export", 1.4, 1),
    ),
    "realistic": (
        ("sampling", 1.2, 25),
        ("decimate", 0.3, 1),
        ("visibility", 0.8, 16),
        ("cut_fill", 1.2, 1),
        ("uv_atlas", 1.4, 1),
        ("bake", 0.9, 20),
        ("export", 0.3, 1),
    ),
}


class SleepingStage1:
    """A stage-1 request that takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, job, options, progress, should_stop):  # noqa: ANN001, D102
        time.sleep(self.seconds)


class SleepingStage2:
    """A stage-2 pipeline whose phases sleep, calling ``progress`` and ``should_stop`` at each check point."""

    voxel_resolution = 64
    info = defaults = None

    def __init__(self, phases: tuple, scale: float) -> None:
        self.phases, self.scale = phases, scale

    def run(self, job, options, progress, should_stop):  # noqa: ANN001, D102
        for phase, seconds, steps in self.phases:
            for step in range(steps):
                progress(phase, step, steps)
                if should_stop():
                    raise RuntimeError("stopped")
                time.sleep(seconds / self.scale / steps)
        return job


def simulate(jobs: int, phases: tuple, scale: float) -> tuple[dict[int, float], list[int]]:
    """Latency of each job (simulated seconds from t = 0) and the completion order."""
    with tempfile.TemporaryDirectory() as folder:
        turn = GpuTurn(Path(folder))
        stage1 = TurnHoldingBackend(SleepingStage1(STAGE1_S / scale), turn)
        handoff: queue.Queue = queue.Queue()
        done: dict[int, float] = {}
        started = time.monotonic()

        def stage1_worker() -> None:
            for job in range(1, jobs + 1):
                stage1.run(job, None, None, lambda: False)
                handoff.put(job)
            handoff.put(None)

        def stage2_worker() -> None:
            while (job := handoff.get()) is not None:
                backend = Stage2PipelineBackend(SleepingStage2(phases, scale), turn, max_wait_s=60.0 / scale)
                backend.run(job, None, lambda *e: None, lambda: False)
                done[job] = time.monotonic() - started

        workers = [threading.Thread(target=stage1_worker), threading.Thread(target=stage2_worker)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return done, sorted(done, key=done.get)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--mesh", choices=sorted(MESHES), default="noisy")
    parser.add_argument("--scale", type=float, default=50.0, help="simulated time = real time / scale")
    parser.add_argument("--code-dir", default=None, help="=DIR: import services/ from DIR (before rows)")
    args = parser.parse_args()
    import services.common.gpu_share as gpu_share

    print(f"gpu_share: {gpu_share.__file__}")
    phases = MESHES[args.mesh]
    lone, _ = simulate(1, phases, args.scale)
    done, order = simulate(args.jobs, phases, args.scale)
    real = {job: round(t * args.scale, 1) for job, t in done.items()}
    lone_s = lone[1] * args.scale
    gpu_s = STAGE1_S + sum(s for phase, s, _ in phases if phase not in HOST_PHASES)
    rate = 60.0 * args.jobs / max(real.values())
    header = f"| mesh | jobs | lone job s | latencies s (job 1..{args.jobs}) | completion order | jobs/min |"
    print(header)
    print("|---|---|---|---|---|---|")
    latencies = ", ".join(str(real[j]) for j in range(1, args.jobs + 1))
    order_text = " ".join(map(str, order))
    print(f"| {args.mesh} | {args.jobs} | {lone_s:.1f} | {latencies} | {order_text} | {rate:.2f} |")
    print(
        f"\nfirst job {real[1]:.1f} s = {real[1] / lone_s:.2f} x lone (target <= 1.5); "
        f"{rate:.2f} jobs/min vs target >= 60 / ({STAGE1_S} + {gpu_s - STAGE1_S:.1f}) = {60.0 / gpu_s:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

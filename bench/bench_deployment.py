"""Deployment bench: the four real services as compose runs them, N jobs back to back through the gateway.

Starts preprocess and the gateway on the CPU and the stage-1 / stage-2 services each pinned to a GPU with
``CUDA_VISIBLE_DEVICES`` (``--gpus 0,1``: one GPU each, as compose.yaml; ``--gpus 0``: both share GPU 0),
using the embedded launcher (``services.launcher.child_specs`` + ``services.supervisor.Supervisor``, which
also restarts a killed child; :mod:`benchlib.launch`). It waits for every health check to be SERVING,
submits ``--jobs`` photos at once (a synthetic RGBA person cut-out, or ``--image``), follows every job's event
stream, and measures:

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
or the kill test did not hold. The launching, polling, client, analysis and tables live in ``bench/benchlib``.

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
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import text_format

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.analyse import analyse, kill_verdict, stage1_in_burst  # noqa: E402
from benchlib.inputs import synthetic_photo  # noqa: E402
from benchlib.jobs import JobRecord, KillTest, run_jobs  # noqa: E402
from benchlib.launch import Deployment, launch  # noqa: E402
from benchlib.poll import MemoryPoller  # noqa: E402
from benchlib.priority import stage1_interference  # noqa: E402
from benchlib.report import markdown, priority_markdown  # noqa: E402

from synchuman.v1 import common_pb2  # noqa: E402


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
    deployment = Deployment(
        ckpts=ckpts,
        data_dir=work,
        device=args.device,
        dtype=args.dtype,
        gpus=tuple(g.strip() for g in args.gpus.split(",") if g.strip()),
        max_queue=max(8, args.jobs),
        stage1_compile=args.stage1_compile,
        priority=not args.no_priority,
        twin=args.compare_priority,
        log_level=args.log_level,
        stop_grace_s=args.stop_grace,
    )
    supervisor, config, routes = launch(deployment, min(args.ready_timeout, args.timeout))
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
                records = run_jobs(route.gateway, photo, args.jobs, job_options(args), kill, run_deadline)
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

"""Stage-2 GPU memory and time on the noisy mesh random weights decode, and on the realistic synthetic body
(issue 25, item 3). Every measurement runs in a fresh child process, so its process peak is its own.

Runs (``--runs``, comma-separated):

- ``noisy``: one whole stage-2 request (:class:`Stage2Pipeline` in-process, full-size random checkpoints,
  fp16, the service's defaults: 25 steps, simplify 0.7, 1000 visibility views at 1024^2, 95 Gaussian renders
  at 1024^2, 1024^2 texture, fast bake) on ``--voxels`` voxels scattered uniformly over the 64^3 grid, the
  layout of a stage-1 output with random weights (bench/RESULTS.md, issue 16 item 3); the decoders turn
  random weights into a noisy mesh. The pipeline's warm-up runs first (it builds gsplat the first time).
- ``stick``: the same on the 20,000-voxel stick-figure shell (``benchlib.inputs.human_occupancy``).
- ``realistic``: post-processing only (``to_glb`` at the defaults) of the ~240k-face synthetic body with 600k
  surface Gaussians and five 768^2 generated views (``bench_postprocess.realistic_inputs``), after one small
  warm-up run.

Per run: seconds (total and per phase), the allocated peak (the largest per-phase
``torch.cuda.max_memory_allocated``: the phase timer resets the counter at every phase), the process peak
(device memory in use, ``total - free`` of ``torch.cuda.mem_get_info``, sampled every 5 ms by a thread: what
``nvidia-smi`` shows for the one process, CUDA context included) and PyTorch's reserved peak (sampled the same
way), faces in / after decimation / out, and the findings.

``--code LABEL=DIR`` (repeatable) runs every run once per code tree, ``DIR`` first on the import path (``.``:
this checkout; a copy of ``synchuman/`` from before a change gives the "before" rows). Prints one markdown
table; JSON goes to ``$OUT/bench_stage2_memory.json``. Device command (wheels installed on PYTHONPATH)::

    python3 bench/bench_stage2_memory.py --ckpts /tmp/ckpts --make-random --runs noisy,realistic \\
        --code after=. --code before=.before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = float(2**30)


def _paths(code_dir: str | None) -> None:
    sys.path[:0] = [p for p in (code_dir, str(ROOT), str(ROOT / "bench")) if p]
    try:
        import cv2  # noqa: F401 - the options module imports preprocess code that imports cv2
    except ImportError:  # the device image may lack OpenCV; nothing measured here calls it
        sys.modules["cv2"] = types.ModuleType("cv2")


class DeviceMemorySampler:
    """Largest device memory in use (``total - free``) and largest PyTorch reserved memory, sampled by a
    thread every ``interval_s`` between :meth:`start` and :meth:`stop` (GiB); ``per_phase``: the largest in
    use while :attr:`phase` (set from the pipeline's progress callback) had each value."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.used = self.reserved = 0.0
        self.phase = "start"
        self.per_phase: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            used = (total - free) / GIB
            self.used = max(self.used, used)
            self.per_phase[self.phase] = round(max(self.per_phase.get(self.phase, 0.0), used), 2)
            self.reserved = max(self.reserved, torch.cuda.memory_reserved() / GIB)
            time.sleep(self.interval_s)

    def start(self) -> DeviceMemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _counts(report) -> dict:
    keys = ("faces_in", "faces_capped_from", "faces_decimated", "removed_by_cut", "faces_out")
    return {k: int(report.counts[k]) for k in keys if k in report.counts}


def child_stage2(args: argparse.Namespace) -> dict:
    import torch
    from bench_request_memory import scattered, stage2_inputs
    from benchlib.inputs import human_occupancy

    import synchuman.pipelines.stage2 as stage2_module
    from synchuman.options import Stage2Options

    captured = []
    original = stage2_module.to_glb

    def spy(*a, **k):
        glb, report = original(*a, **k)
        captured.append(report)
        return glb, report

    stage2_module.to_glb = spy
    started = time.perf_counter()
    pipeline = stage2_module.Stage2Pipeline.from_pretrained(args.ckpts, "cuda", "float16")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    warm_error = None
    try:
        pipeline.warm_up()
    except Exception as exc:  # noqa: BLE001 - e.g. gsplat's build failed: measured without Gaussian renders
        warm_error = repr(exc)[:400]
        pipeline.render_views = 0
    warm_s = time.perf_counter() - started
    coords = scattered(args.voxels) if args.child == "noisy" else human_occupancy(20000)
    inputs = stage2_inputs(coords)
    torch.cuda.synchronize()
    sampler = DeviceMemorySampler().start()
    started = time.perf_counter()
    result = pipeline.run(
        inputs, Stage2Options(), lambda phase, *e: setattr(sampler, "phase", phase), lambda: False
    )
    torch.cuda.synchronize()
    total_s = time.perf_counter() - started
    sampler.stop()
    report = captured[-1]
    return {
        "voxels": len(coords),
        "load_s": round(load_s, 1),
        "warmup_s": round(warm_s, 1),
        "total_s": round(total_s, 2),
        "phases_s": {k: round(v, 2) for k, v in result.phase_seconds.items()},
        "phase_peak_gib": {k: round(v, 2) for k, v in result.phase_peak_gib.items()},
        "allocated_peak_gib": round(max(result.phase_peak_gib.values()), 2),
        "process_peak_gib": round(sampler.used, 2),
        "process_peak_by_phase_gib": sampler.per_phase,
        "reserved_peak_gib": round(sampler.reserved, 2),
        "counts": _counts(report),
        "findings": [f"{getattr(f.severity, 'value', f.severity)}:{f.code}" for f in result.report.findings],
        "gaussian_backend": report.backends.get("gaussian_render", "none"),
        "warmup_error": warm_error,
    }


def child_realistic(args: argparse.Namespace) -> dict:
    import torch
    from bench_postprocess import realistic_inputs, warm_up

    from synchuman.options import PostprocessOptions
    from synchuman.postprocess import pipeline

    device = torch.device("cuda")
    _, _, mesh, splats, views = realistic_inputs(device, 340, 600_000, 768)
    _, warm = warm_up(mesh, splats, views, True)
    torch.cuda.synchronize()
    sampler = DeviceMemorySampler().start()
    started = time.perf_counter()
    _, report = pipeline.to_glb(
        mesh, splats, views, PostprocessOptions(), progress=lambda phase, *e: setattr(sampler, "phase", phase)
    )
    torch.cuda.synchronize()
    total_s = time.perf_counter() - started
    sampler.stop()
    return {
        "warmup_s": warm.get("warmup_s"),
        "total_s": round(total_s, 2),
        "phases_s": {k: round(v, 2) for k, v in report.phases.items()},
        "phase_peak_gib": {k: round(v, 2) for k, v in report.phase_peak_gib.items()},
        "allocated_peak_gib": round(max(report.phase_peak_gib.values()), 2),
        "process_peak_gib": round(sampler.used, 2),
        "process_peak_by_phase_gib": sampler.per_phase,
        "reserved_peak_gib": round(sampler.reserved, 2),
        "counts": _counts(report),
        "findings": [c.name for c in report.checks if not c.ok],
        "gaussian_backend": report.backends.get("gaussian_render", "none"),
        "bake_l1": round(report.bake.l1, 4) if report.bake else None,
    }


def child_make_random(args: argparse.Namespace) -> dict:
    import torch

    from synchuman.checkpoints.full_size import write_random_tree

    started = time.perf_counter()
    total = write_random_tree(
        Path(args.ckpts), torch.float16, "cuda", 0, ("dinov2", "stage2"), say=lambda s: None
    )
    return {"gb": round(total / 1e9, 2), "seconds": round(time.perf_counter() - started, 1)}


def child(args: argparse.Namespace) -> None:
    _paths(args.code_dir)
    import synchuman
    from synchuman.options import PostprocessOptions

    run = {"noisy": child_stage2, "stick": child_stage2, "realistic": child_realistic}.get(
        args.child, child_make_random
    )
    result = run(args)
    result["synchuman"] = str(Path(synchuman.__file__).parent)
    result["has_face_cap"] = hasattr(PostprocessOptions(), "max_working_faces")
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args: argparse.Namespace, run: str, code_dir: str | None, timeout_s: float) -> dict:
    cmd = [sys.executable, __file__, "--child", run, "--ckpts", str(args.ckpts), "--voxels", str(args.voxels)]
    if code_dir:
        cmd += ["--code-dir", str(Path(code_dir).resolve())]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout_s:.0f} s", "tail": str(exc.stderr or "")[-1500:]}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stderr or proc.stdout)[-2500:]}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["child_wall_s"] = round(time.perf_counter() - started, 1)
    return result


def table(rows: list[tuple[str, str, dict]]) -> str:
    out = [
        "| run | code | faces in / decimated / out | total s | largest phases (s) | allocated peak GiB "
        "(largest phase) | process peak GiB (phase) | reserved peak GiB | findings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, label, r in rows:
        if "error" in r:
            out.append(f"| {run} | {label} | {r['error']} | | | | | | |")
            continue
        c = r["counts"]
        faces = f"{c.get('faces_in', '?')} / {c.get('faces_decimated', '?')} / {c.get('faces_out', '?')}"
        phases = sorted(r["phases_s"].items(), key=lambda kv: -kv[1])[:5]
        peak_phase = max(r["phase_peak_gib"].items(), key=lambda kv: kv[1])
        by_phase = r.get("process_peak_by_phase_gib") or {"?": r["process_peak_gib"]}
        process_phase = max(by_phase.items(), key=lambda kv: kv[1])[0]
        out.append(
            f"| {run} | {label} | {faces} | {r['total_s']} | "
            + ", ".join(f"{k} {v}" for k, v in phases)
            + f" | {r['allocated_peak_gib']} ({peak_phase[0]}) | {r['process_peak_gib']} ({process_phase}) | "
            f"{r['reserved_peak_gib']} | {', '.join(r['findings']) or '-'} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpts", type=Path, default=Path("/tmp/ckpts"))
    parser.add_argument("--make-random", action="store_true", help="write the dinov2 + stage2 random tree")
    parser.add_argument("--runs", default="noisy,realistic", help="RUN or RUN@LABEL (that code tree only)")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--voxels", type=int, default=22432)
    parser.add_argument("--child-timeout", type=float, default=300.0)
    parser.add_argument("--budget", type=float, default=540.0, help="skip runs that would start after this")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    started = time.perf_counter()
    results: dict = {}
    if args.make_random:
        results["make_random"] = spawn(args, "make", None, args.child_timeout)
        print("random checkpoints:", results["make_random"], flush=True)
    codes = [c.split("=", 1) for c in args.code] or [["after", "."]]
    rows = []
    for spec in args.runs.split(","):
        run, _, only = spec.partition("@")  # "noisy@after": that code tree only
        for label, code_dir in codes:
            if only and label != only:
                continue
            elapsed = time.perf_counter() - started
            if elapsed > args.budget:
                rows.append((run, label, {"error": f"skipped ({elapsed:.0f} s > --budget)"}))
                continue
            timeout = min(args.child_timeout, args.budget + 50 - elapsed)
            result = spawn(args, run, None if code_dir == "." else code_dir, timeout)
            rows.append((run, label, result))
            print(f"{run} [{label}]: " + json.dumps(result), flush=True)
    results["rows"] = [{"run": r, "code": label, **res} for r, label, res in rows]
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_stage2_memory.json").write_text(json.dumps(results, indent=1))
    print("\n" + table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

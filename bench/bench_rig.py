"""Bench of the rig step (issue 22): the per-pose table of the synthetic people, and the time and peak memory
of :func:`synchuman.rig.api.rig_glb` on the realistic body.

- Table: the five synthetic poses of :mod:`benchlib.rig_bodies` (as tests/test_rig_synthetic.py builds
  them), each rigged from its four views' projected landmarks: mean / max joint error (share of the body's
  height), joints outside the mesh, largest |weight sum - 1|, most influences, left/right bleeding vertices,
  and the worst of the 60-degree bends of elbows, knees, shoulders and hips (95th percentiles over the edges
  that move of the stretch and of |length change|; flipped triangles of all and of those that move).
- Realistic body: the post-processing benches' capsule person (:func:`benchlib.meshes.body_mesh`, 340^3,
  ~240k faces) decimated as the post-processing does by default (simplify 0.7), UV-atlased (seams, as in
  ``person.glb``) and exported by :func:`synchuman.postprocess.export.glb_bytes`; its landmarks projected on
  the four views (512 px). ``rig_glb`` runs ``--repeats`` times: seconds (each phase too), peak RSS above the
  start (sampled every 5 ms), the longest gap between two ``should_stop`` calls (cancellation latency), the
  Khronos validator's counts on the rigged GLB when node and the npm package are there, and the table's
  checks (its one part: no left/right bleeding figure).

Usage: ``python bench/bench_rig.py`` (``--save-input F.npz`` keeps the realistic input, ``--input F.npz``
reuses it: the GLB and landmarks need trimesh, xatlas and fast-simplification to build, the rig step only
numpy, scipy and torch for its cameras). JSON goes to $OUT/bench_rig.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib import rig_bodies  # noqa: E402

from synchuman.rig.api import RigResult, ViewLandmarks, rig_glb  # noqa: E402

#: (index, start, end, share along the capsule) of the realistic body's landmarks on its capsules
#: (benchlib.meshes: torso, right leg, left leg, right arm, left arm, neck; x > 0 is the person's left).
_REALISTIC_POINTS = {11: (4, 0.0), 13: (4, 0.5), 15: (4, 0.82), 17: (4, 1.0), 19: (4, 1.0), 21: (4, 0.9),
                     12: (3, 0.0), 14: (3, 0.5), 16: (3, 0.82), 18: (3, 1.0), 20: (3, 1.0), 22: (3, 0.9),
                     23: (2, 0.0), 25: (2, 0.5), 27: (2, 0.88), 29: (2, 0.92), 31: (2, 1.0),
                     24: (1, 0.0), 26: (1, 0.5), 28: (1, 0.88), 30: (1, 0.92), 32: (1, 1.0)}  # fmt: skip


def table(resolution: int, view_size: int) -> list[dict]:
    """The per-pose checks (and rig seconds) of the synthetic poses, printed as a markdown table."""
    rows = []
    for pose in rig_bodies.POSES:
        body = rig_bodies.build_body(pose, resolution)
        views = rig_bodies.landmark_views(body, view_size)
        start = time.perf_counter()
        result = rig_glb(body.glb(), views)
        seconds = time.perf_counter() - start
        checks = rig_bodies.check_rig(body, result.joints, result.glb) if result.glb else {}
        rows.append(
            {"pose": pose, "faces": len(body.faces), "reason": result.reason, "rig_s": seconds, **checks}
        )
    header = (
        "pose", "faces", "joint error mean / max (% height)", "joints outside", "max abs(sum w - 1)",
        "max influences", "L/R bleed vertices", "stretch p95 (moved edges)", "abs(length change) p95",
        "flipped triangles (all / moved)", "rig s",
    )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("| --- " * len(header) + "|")
    for r in rows:
        if r["reason"]:
            print(f"| {r['pose']} | {r['faces']} | failed: {r['reason']} |")
            continue
        cells = (
            r["pose"], r["faces"], f"{100 * r['joint_error_mean']:.2f} / {100 * r['joint_error_max']:.2f}",
            r["joints_outside"], f"{r['weight_sum_error']:.1e}", r["max_influences"], r["left_right_bleed"],
            f"{100 * r['stretch_p95']:.1f} %", f"{100 * r['change_p95']:.1f} %",
            f"{100 * r['flips']:.2f} % / {100 * r['flips_moved']:.2f} %", f"{r['rig_s']:.2f}",
        )  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def realistic_landmarks() -> np.ndarray:
    """The realistic body's 33 landmarks ``[33, 3]`` (model frame) on its capsules and head."""
    from benchlib.meshes import _BODY_CAPSULES, _HEAD

    marks = np.zeros((33, 3))
    for index, (capsule, share) in _REALISTIC_POINTS.items():
        a, b, _ = _BODY_CAPSULES[capsule]
        marks[index] = np.array(a) + share * (np.array(b) - np.array(a))
    head, radius = np.array(_HEAD[0]), _HEAD[1]
    for left, right, offset in ((1, 4, (0.015, -0.07, 0.015)), (2, 5, (0.025, -0.068, 0.015)),
                                (3, 6, (0.035, -0.062, 0.015)), (7, 8, (radius, 0.0, 0.0)),
                                (9, 10, (0.02, -0.068, -0.03))):  # fmt: skip
        marks[left], marks[right] = head + offset, head + np.array(offset) * (-1, 1, 1)
    marks[0] = head + (0, -radius, -0.01)
    return marks


def realistic_body(glb: bytes) -> rig_bodies.Body:
    """The realistic body as a :class:`~benchlib.rig_bodies.Body` of its GLB's vertices (one part)."""
    from synchuman.postprocess.export import Z_UP_TO_Y_UP
    from synchuman.rig.skin_gltf import Glb, read_mesh

    mesh = read_mesh(Glb.parse(glb))
    vertices = (mesh.positions @ Z_UP_TO_Y_UP.T).astype(np.float32)
    return rig_bodies.Body("realistic", vertices, mesh.faces, np.zeros(len(vertices), int), ("body",),
                           realistic_landmarks())  # fmt: skip


def realistic_input(view_size: int) -> tuple[bytes, list[ViewLandmarks]]:
    """The realistic body's plain GLB (decimated, atlased, textured) and its four views' landmarks."""
    from benchlib.meshes import body_mesh

    from synchuman.postprocess import export
    from synchuman.postprocess.decimate import decimate
    from synchuman.postprocess.uv_atlas import parametrize

    verts, faces = decimate(*body_mesh(340), 0.7)
    atlas = parametrize(verts, faces, 512)
    texture = np.full((512, 512, 3), 170, np.uint8)
    glb = export.glb_bytes(atlas.vertices, atlas.faces, atlas.uvs, texture)
    return glb, rig_bodies.landmark_views(realistic_body(glb), view_size)


class PeakRss:
    """Samples the process's resident set every 5 ms while inside; ``peak`` bytes above the start."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak_abs = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = self.peak_abs - self.start

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while self.running:
            self.peak_abs = max(self.peak_abs, self._rss())
            time.sleep(0.005)


def time_rig(glb: bytes, views: list[ViewLandmarks], repeats: int) -> tuple[dict, RigResult]:
    """Seconds, phases, peak RSS and the longest gap between stop checks of ``repeats`` rig runs."""
    runs = []
    result = None
    for _ in range(repeats):
        stamps: list[float] = []

        def stamp(stamps: list[float] = stamps) -> bool:
            stamps.append(time.perf_counter())
            return False

        with PeakRss() as rss:
            start = time.perf_counter()
            result = rig_glb(glb, views, should_stop=stamp)
            total = time.perf_counter() - start
        gaps = np.diff([start, *stamps, start + total])
        runs.append(
            {
                "seconds": round(total, 3),
                "phases_s": {k: round(v, 3) for k, v in result.timings.items()},
                "peak_rss_mib": round(rss.peak / 2**20, 1),
                "max_stop_gap_s": round(float(gaps.max()), 3),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    return {
        "runs": runs,
        "best_s": min(r["seconds"] for r in runs),
        "median_s": float(np.median([r["seconds"] for r in runs])),
    }, result


def validate(glb: bytes) -> dict | None:
    """The Khronos validator's issue counts for ``glb`` (None when node or the npm package is missing)."""
    if not (ROOT / "node_modules" / "gltf-validator").exists():
        return None
    script = (
        "const v=require('gltf-validator');let c=[];process.stdin.on('data',d=>c.push(d)).on('end',()=>"
        "v.validateBytes(new Uint8Array(Buffer.concat(c))).then(r=>console.log(JSON.stringify(r.issues))));"
    )
    try:
        done = subprocess.run(
            ["node", "-e", script], input=glb, cwd=ROOT, capture_output=True, timeout=120, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    issues = json.loads(done.stdout)
    return {k: issues[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-table", action="store_true", help="only the realistic body")
    parser.add_argument("--input", type=Path, help="realistic input saved by --save-input")
    parser.add_argument("--save-input", type=Path)
    parser.add_argument("--view-size", type=int, default=512)
    args = parser.parse_args()
    results: dict = {"cpu_count": os.cpu_count()}
    if not args.no_table:
        results["table"] = table(64, 128)
    if args.input:
        saved = np.load(args.input, allow_pickle=False)
        glb = saved["glb"].tobytes()
        views = [ViewLandmarks(str(n), m, (int(s[0]), int(s[1])))
                 for n, m, s in zip(saved["names"], saved["marks"], saved["sizes"], strict=True)]  # fmt: skip
    else:
        t = time.perf_counter()
        glb, views = realistic_input(args.view_size)
        results["input_build_s"] = round(time.perf_counter() - t, 1)
    if args.save_input:
        names, marks = np.array([v.view for v in views]), np.stack([v.landmarks for v in views])
        sizes = np.array([v.image_size for v in views])
        np.savez(args.save_input, glb=np.frombuffer(glb, np.uint8), names=names, marks=marks, sizes=sizes)
    results["realistic_glb_mb"] = round(len(glb) / 1e6, 2)
    results["realistic"], result = time_rig(glb, views, args.repeats)
    results["realistic"]["reason"] = result.reason
    results["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if result.glb:
        results["realistic"]["validator"] = validate(result.glb)
        results["realistic"]["rigged_glb_mb"] = round(len(result.glb) / 1e6, 2)
        checks = rig_bodies.check_rig(realistic_body(glb), result.joints, result.glb)
        results["realistic"]["checks"] = {k: round(v, 4) for k, v in checks.items()}
    print(json.dumps({k: v for k, v in results.items() if k != "table"}, indent=1, default=str))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_rig.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Preprocess stage on the CPU: latency for a 12 MP photo, and segmentation IoU of the default segmenter.

    .venv/bin/python bench/bench_preprocess.py [--runs 7] [--images ../shared/images] [--no-iou]

Latency: a 3024x4032 (12.2 MP) JPEG (quality 92) of a person (``person_002.png`` composited on the
photo-like clutter background of the tests, with margin) goes through
``synchuman.preprocess.pipeline.preprocess`` (decode, u2netp mask with mirror + zoom passes, quality gate,
768 framing, 518 conditioning crop). "cold" is the
first call of the process (loads the ONNX model); "warm" the median of ``--runs`` further calls, with the
per-phase split. "CLI" is ``synchuman preprocess photo.jpg -o out.png`` in a fresh process (interpreter start,
imports, model load, run, PNG write), median of 3.

IoU: every ``person_*.png`` cut-out composited on each background (the test's plain, noise, clutter, plus
harder ones: sharp texture tiles, a synthetic room with shelves, a real outdoor photo with a salient object),
mask > 127 against alpha > 127.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from test_preprocess_segment import background, composite, texture_collage  # noqa: E402

from synchuman.options import PreprocessOptions  # noqa: E402
from synchuman.preprocess import segment  # noqa: E402
from synchuman.preprocess.decode import DecodedImage  # noqa: E402
from synchuman.preprocess.pipeline import person_mask, preprocess  # noqa: E402


def photo_12mp(images: Path) -> bytes:
    """A 3024 x 4032 JPEG of a standing person in front of clutter."""
    rng = np.random.default_rng(7)
    height, width = 4032, 3024
    canvas = texture_collage(height, width, rng, blur=6.0).astype(np.float32)
    person = np.asarray(Image.open(images / "person_002.png").convert("RGBA"))
    scale = 3200 / person.shape[0]
    person = cv2.resize(person, (round(person.shape[1] * scale), 3200), interpolation=cv2.INTER_AREA)
    top, left = 400, (width - person.shape[1]) // 2
    alpha = person[:, :, 3:] / 255.0
    region = canvas[top : top + person.shape[0], left : left + person.shape[1]]
    region[:] = person[:, :, :3] * alpha + region * (1 - alpha)
    buf = io.BytesIO()
    Image.fromarray(canvas.astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def room(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A wall with a vertical gradient and shelves of random 'books', mildly blurred, with sensor noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    wall = np.stack([200 - 40 * yy, 190 - 30 * xx, 170 + 20 * yy], axis=2).astype(np.float32)
    for _ in range(height * width // 4000):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(4, max(5, width // 12))), int(rng.integers(8, max(9, height // 8)))
        wall[y : y + h, x : x + w] = rng.uniform(40, 230, 3)
    wall = cv2.GaussianBlur(np.clip(wall, 0, 255).astype(np.uint8), (0, 0), 1.5).astype(np.float32)
    return np.clip(wall + rng.normal(0, 6, wall.shape), 0, 255).astype(np.uint8)


def any_background(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "clutter-sharp":
        return texture_collage(height, width, rng, blur=0)
    if kind == "room":
        return room(height, width, rng)
    if kind == "outdoor-photo":
        import skimage.data

        return cv2.resize(skimage.data.rocket(), (width, height), interpolation=cv2.INTER_CUBIC)
    return background(kind, height, width, rng)


def iou_table(images: Path) -> list[tuple[str, list[float]]]:
    rows = []
    paths = sorted(images.glob("person_*.png"))
    for kind in ("plain", "noise", "clutter", "clutter-sharp", "room", "outdoor-photo"):
        rng = np.random.default_rng(0)
        scores = []
        for path in paths:
            photo, truth = composite(np.asarray(Image.open(path).convert("RGBA")), kind, rng, any_background)
            mask, _, _, _ = person_mask(DecodedImage(photo, None, "PNG", "RGB"), PreprocessOptions())
            predicted = mask > 127
            scores.append(float((predicted & truth).sum() / (predicted | truth).sum()))
        rows.append((kind, scores))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--images", type=Path, default=REPO_ROOT.parent / "shared" / "images")
    parser.add_argument("--no-iou", action="store_true")
    args = parser.parse_args()

    data = photo_12mp(args.images)
    print(f"input: 3024x4032 JPEG, {len(data) / 2**20:.1f} MiB; CPU cores: {os.cpu_count()}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    segment._CACHE.clear()
    started = time.perf_counter()
    preprocess(data)
    cold = time.perf_counter() - started
    totals, cpu, phases = [], [], []
    for _ in range(args.runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = preprocess(data)
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        phases.append(result.timings)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "photo.jpg"
        source.write_bytes(data)
        cli_runs = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "synchuman_cli", "preprocess", str(source), "-o",
                            str(Path(tmp) / "out.png")], check=True, capture_output=True)
            cli_runs.append(time.perf_counter() - started)
        cli = statistics.median(cli_runs)

    print("\n| 12 MP photo | seconds |\n|---|---|")
    print(f"| cold (first call, loads the model) | {cold:.3f} |")
    print(f"| warm, median of {args.runs} | {statistics.median(totals):.3f} |")
    print(f"| warm, best | {min(totals):.3f} |")
    print(f"| warm, CPU seconds (all threads), median | {statistics.median(cpu):.3f} |")
    for phase in phases[0]:
        print(f"| - {phase} (median) | {statistics.median(p[phase] for p in phases):.3f} |")
    print(f"| CLI in a fresh process (start-up + model load + run + PNG write), median of 3 | {cli:.3f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes share the cores)")
    report = result.report
    print(f"\nreport: coverage {report.mask_coverage:.3f}, box {report.bbox_fraction:.3f}, "
          f"components {report.person_components}, confidence {report.mask_confidence:.3f}, "
          f"issues {[i.code for i in report.issues]}")

    if args.no_iou:
        return
    rows = iou_table(args.images)
    names = [p.stem for p in sorted(args.images.glob("person_*.png"))]
    print(f"\n| background | {' | '.join(names)} | mean |\n|---|{'---|' * (len(names) + 1)}")
    for kind, scores in rows:
        print(f"| {kind} | {' | '.join(f'{s:.3f}' for s in scores)} | {np.mean(scores):.3f} |")
    tested = [s for kind, scores in rows if kind in ("plain", "noise", "clutter") for s in scores]
    print(f"\nmean IoU over the test's backgrounds (plain, noise, clutter): {np.mean(tested):.3f}")


if __name__ == "__main__":
    main()

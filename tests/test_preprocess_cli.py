"""``synchuman preprocess``: outputs, report, and one-line errors (exit 2, no traceback) for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from synchuman_cli.main import main


def cutout_png(path, height: int = 300, width: int = 200) -> None:
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[30:270, 50:150] = (200, 120, 40, 255)
    Image.fromarray(rgba, "RGBA").save(path)


def test_cli_writes_outputs_and_report(tmp_path, capsys) -> None:
    source = tmp_path / "person.png"
    cutout_png(source)
    out, mask, cond, report = (tmp_path / n for n in ("out.png", "mask.png", "cond.png", "report.json"))
    status = main(["preprocess", str(source), "-o", str(out), "--mask", str(mask),
                   "--conditioning", str(cond), "--report", str(report)])
    assert status == 0
    framed = Image.open(out)
    assert framed.size == (768, 768) and framed.mode == "RGBA"
    written_mask = Image.open(mask)
    assert written_mask.size == (200, 300) and written_mask.mode == "L"
    assert Image.open(cond).size == (518, 518)
    data = json.loads(report.read_text())
    assert data["mask_source"] == "alpha" and data["width"] == 200 and data["height"] == 300
    assert "mask from alpha" in capsys.readouterr().out


def test_cli_segments_a_photo(tmp_path, images_dir, segmenter_dir) -> None:
    cutout = np.asarray(Image.open(images_dir / "person_001.png").convert("RGBA")).astype(np.float32)
    photo = np.full((cutout.shape[0] + 100, cutout.shape[1] + 100, 3), 128, np.float32)
    alpha = cutout[:, :, 3:] / 255
    photo[50:-50, 50:-50] = cutout[:, :, :3] * alpha + 128 * (1 - alpha)
    source = tmp_path / "photo.jpg"
    Image.fromarray(photo.astype(np.uint8)).save(source, quality=92)
    mask = tmp_path / "mask.png"
    status = main(["preprocess", str(source), "-o", str(tmp_path / "o.png"), "--mask", str(mask),
                   "--segmentation-dir", str(segmenter_dir), "--segmenter", "u2netp"])
    assert status == 0
    values = np.asarray(Image.open(mask))
    assert values.shape == photo.shape[:2]
    truth = np.zeros(photo.shape[:2], bool)
    truth[50:-50, 50:-50] = cutout[:, :, 3] > 127
    iou = ((values > 127) & truth).sum() / ((values > 127) | truth).sum()
    assert iou > 0.95


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty"), (b"GIF89a" + b"\0" * 20, "not an image"), (b"plain text, no picture", "not an image")],
)
def test_cli_bad_input_one_line(tmp_path, capsys, content: bytes, reason: str) -> None:
    source = tmp_path / "bad.jpg"
    source.write_bytes(content)
    assert main(["preprocess", str(source), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_cli_missing_file_and_quality_gate(tmp_path, capsys) -> None:
    assert main(["preprocess", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = np.zeros((100, 100, 4), np.uint8)
    empty[50, 50] = 255
    Image.fromarray(empty, "RGBA").save(tmp_path / "empty.png")
    report = tmp_path / "r.json"
    assert main(["preprocess", str(tmp_path / "empty.png"), "-o", str(tmp_path / "o.png"), "--report",
                 str(report)]) == 2
    assert "no person found" in capsys.readouterr().err
    assert json.loads(report.read_text())["issues"][0]["code"] == "EMPTY_MASK"


def test_cli_truncated_photo_in_a_subprocess(tmp_path, images_dir) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synchuman_cli", "preprocess", str(images_dir / "photo_truncated.jpeg"),
         "-o", str(tmp_path / "o.png")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "truncated" in result.stderr and "Traceback" not in result.stderr

"""``synchuman reconstruct --in-process``: the pipeline in the command's own process, no servers (CPU, tiny
random checkpoints)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from synchuman_cli.main import main

SMALL = "--steps1 2 --steps2 2 --texture-size 256 --bake-steps 5 --visibility-views 8 --simplify 0.95".split()


@pytest.fixture
def photo(small_photo: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "person.png"
    path.write_bytes(small_photo)
    return path


def reconstruct(photo: Path, output: Path, *flags: str) -> int:
    return main(["reconstruct", str(photo), "-o", str(output), "--in-process", "--device", "cpu", "--quiet",
                 *flags])


def test_an_out_of_range_option_is_named(photo, tmp_path, capsys) -> None:
    assert reconstruct(photo, tmp_path / "x.glb", "--steps1", "0") == 2
    err = capsys.readouterr().err
    assert "synchuman reconstruct: error: options.multiview.steps: " in err and "1 to 200" in err, err
    assert not (tmp_path / "x.glb").exists()


def test_missing_checkpoints_are_a_user_error(photo, tmp_path, capsys) -> None:
    assert reconstruct(photo, tmp_path / "x.glb", "--ckpts", str(tmp_path / "nothing")) == 2
    err = capsys.readouterr().err
    assert "synchuman reconstruct: error: " in err and str(tmp_path / "nothing") in err, err


@pytest.mark.slow
def test_writes_the_glb_views_and_report_like_the_served_path(tiny_ckpts, photo, tmp_path, capsys) -> None:
    import trimesh

    output = tmp_path / "out" / "person.glb"
    assert reconstruct(photo, output, "--ckpts", str(tiny_ckpts), "--extra", "views", *SMALL) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("in-process reconstruction: SUCCEEDED in ")
    assert f"wrote {output}" in printed
    scene = trimesh.load(io.BytesIO(output.read_bytes()), file_type="glb", force="scene")
    faces = sum(len(g.faces) for g in scene.geometry.values())
    assert faces > 0 and f"{faces} faces" in printed
    views = sorted(p.name for p in output.parent.glob("person.*_*.png"))
    assert views == [f"person.{kind}_{i}.png" for kind in ("color", "normal") for i in range(5)]
    report = json.loads((output.parent / "person.report.json").read_text())
    assert report["output_report"]["faceCount"] == faces
    assert report["input_report"]["width"] > 0

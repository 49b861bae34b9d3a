"""`synchuman parity` on the stage-2 fixtures (and on broken copies of them, which must fail)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from synchuman_cli.main import main

KINDS = ("slat_flow", "sampler", "decoder_gs", "decoder_mesh")


@pytest.fixture(scope="module")
def stage2_dir(parity_dir: Path) -> Path:
    path = parity_dir / "stage2"
    if not path.is_dir():
        pytest.fail(f"{path} missing from the parity fixtures")
    return path


def test_all_stage2_fixtures_pass(stage2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["parity", str(stage2_dir), "--threads", "1"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert code == 0, out
    assert len(lines) == len(KINDS), out
    for kind in KINDS:
        assert any(line.startswith("PASS") and f"[{kind}]" in line for line in lines), out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_perturbed_output_fails(stage2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = _copy(stage2_dir / "slat_flow", tmp_path / "flow_broken")  # kind from meta.json, not the name
    io = load_file(fixture / "io.safetensors")
    io["out.feats"] = io["out.feats"].clone()
    io["out.feats"][3, 2] += 1e-3
    save_file(io, fixture / "io.safetensors")
    (tmp_path / "not_a_fixture").mkdir()
    (tmp_path / "not_a_fixture" / "meta.json").write_text("{}")
    code = main(["parity", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "[slat_flow]" in out and "out.feats" in out
    assert "not_a_fixture" not in out


def test_mesh_topology_change_fails(
    stage2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = _copy(stage2_dir / "decoder_mesh", tmp_path / "decoder_mesh")
    io = load_file(fixture / "io.safetensors")
    faces = io["out.0.faces"].clone()
    faces[0] = faces[0].flip(0)  # same triangle, opposite winding
    io["out.0.faces"] = faces
    save_file(io, fixture / "io.safetensors")
    assert main(["parity", str(fixture)]) == 1
    assert "out.0.faces" in capsys.readouterr().out


def test_no_fixtures_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", str(tmp_path)]) == 2
    assert "no fixture folders" in capsys.readouterr().err

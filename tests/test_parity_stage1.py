"""`synchuman parity` on the stage-1 fixtures (and on altered copies of them, which must fail or pass)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from synchuman_cli.main import main

KINDS = ("diffusion_2d3d", "ss_decoder", "dinov2")


@pytest.fixture(scope="module")
def stage1_dir(parity_dir: Path) -> Path:
    path = parity_dir / "stage1"
    if not path.is_dir():
        pytest.fail(f"{path} missing from the parity fixtures")
    return path


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]


def test_all_stage1_fixtures_pass(stage1_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["parity", str(stage1_dir)])
    out = capsys.readouterr().out
    lines = _lines(out)
    assert code == 0, out
    assert len(lines) == len(KINDS), out
    for kind in KINDS:
        assert any(line.startswith("PASS") and f"[{kind}]" in line for line in lines), out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_perturbed_outputs_fail(stage1_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decoder = _copy(stage1_dir / "ss_decoder", tmp_path / "occupancy_decoder")  # kind from meta.json
    io = load_file(decoder / "io.safetensors")
    io["out.logits"] = io["out.logits"].clone()
    io["out.logits"][1, 0, 3, 4, 5] += 1e-4
    save_file(io, decoder / "io.safetensors")
    vit = _copy(stage1_dir / "dinov2", tmp_path / "vit_registers")
    io = load_file(vit / "io.safetensors")
    io["out.intermediate_70_block1"] = io["out.intermediate_70_block1"].clone()
    io["out.intermediate_70_block1"][0, 7, 3] -= 1e-4
    save_file(io, vit / "io.safetensors")
    code = main(["parity", str(tmp_path)])
    out = capsys.readouterr().out
    lines = _lines(out)
    assert code == 1, out
    assert len(lines) == 2, out
    assert any(line.startswith("FAIL") and "[ss_decoder]" in line and "out.logits" in line for line in lines)
    assert any(line.startswith("FAIL") and "[dinov2]" in line and "block1" in line for line in lines)


def test_unseen_dinov2_fixture_runs_from_its_io(
    stage1_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixture with other sizes / block indices runs without code changes (recomputed reference)."""
    import torch

    from synchuman.parity.registry import load_fixture
    from synchuman.parity.stage1 import _dinov2_model

    vit = _copy(stage1_dir / "dinov2", tmp_path / "another_vit")
    model = _dinov2_model(load_fixture(vit, torch.device("cpu")))
    x = torch.randn(1, 3, 84, 98, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, is_training=True)
        layers = model.get_intermediate_layers(x, [2])
    io = {
        "in.image_84": x,
        "out.x_prenorm_84": out["x_prenorm"],
        "out.intermediate_84_block2": layers[0],
        "out.intermediate_84_concat": layers[0],
    }
    save_file({k: v.contiguous().clone() for k, v in io.items()}, vit / "io.safetensors")
    code = main(["parity", str(vit)])
    out_text = capsys.readouterr().out
    assert code == 0, out_text
    assert "(3 checks" in out_text, out_text

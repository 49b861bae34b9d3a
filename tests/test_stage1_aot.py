"""The ahead-of-time compiled model (synchuman/pipelines/compiled_model.py), used by stage 1's --compile.

One real torch.export + AOTInductor build of a small attention model on the CPU (~25 s on two busy cores);
the rebuild paths copy that package instead of compiling again. (A package of the tiny stage-1 diffusion
model itself takes ~5 min to build on this CPU, too slow for CI: measured by hand, its 2-step stage-1 output
matched eager's, the views within 1/255 and the voxels exactly.)
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from synchuman.nn.attention import attention
from synchuman.pipelines import compiled_model
from synchuman.pipelines.compiled_model import (
    KEY_SUFFIX,
    PACKAGE_SUFFIX,
    AotCompiledModel,
    files_identity,
    key_digest,
    package_key,
)

WEIGHTS = "weights.safetensors:123:456"


class SmallAttentionModel(nn.Module):
    """``x [B, L, 16], scale [1] -> ([B, L, 8], [B])``: projections around one multi-head attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = (t.unflatten(-1, (2, 8)) for t in self.qkv(x).chunk(3, dim=-1))
        y = self.out(attention(q, k, v).flatten(2)) * scale
        return y, y.square().mean(dim=(1, 2))


def _arguments(length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, length, 16, generator=generator), torch.full((1,), 0.5)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """The model and a directory holding its package, built once (a real export + AOTInductor compile)."""
    torch.manual_seed(0)
    model = SmallAttentionModel().eval()
    directory = tmp_path_factory.mktemp("aot")
    compiled = AotCompiledModel(model, directory, "small", WEIGHTS)
    with torch.inference_mode():
        compiled(*_arguments())
    assert compiled.source == "built"
    return model, directory


def _package(directory: Path) -> Path:
    (path,) = directory.glob(f"small-*{PACKAGE_SUFFIX}")
    return path


def _copy_instead_of_building(monkeypatch: pytest.MonkeyPatch, good_package: Path) -> list[Path]:
    """Make rebuilds copy a good package (no second compile); returns the list of rebuilt paths."""
    rebuilt: list[Path] = []

    def copy(model: nn.Module, args: tuple[object, ...], path: Path) -> None:
        rebuilt.append(path)
        shutil.copyfile(good_package, path)

    monkeypatch.setattr(compiled_model, "build_package", copy)
    return rebuilt


def test_a_restart_loads_the_package_and_matches_eager(built, tmp_path, caplog) -> None:
    model, directory = built
    caplog.set_level(logging.INFO, logger=compiled_model.__name__)
    restarted = AotCompiledModel(model, directory, "small", WEIGHTS)
    with torch.inference_mode():
        got = restarted(*_arguments())
        expected = model(*_arguments())
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        assert restarted.source == "loaded"
        assert any(r.getMessage() == "compiled model package loaded" for r in caplog.records)
        # other shapes than the package's: the eager model answers, with a warning
        longer = restarted(*_arguments(length=20))
        torch.testing.assert_close(longer[0], model(*_arguments(length=20))[0])
    assert "other arguments than its package" in caplog.text


def test_a_corrupt_package_is_rebuilt(built, tmp_path, monkeypatch, caplog) -> None:
    model, directory = built
    shutil.copytree(directory, tmp_path / "aot")
    package = _package(tmp_path / "aot")
    package.write_bytes(package.read_bytes()[:1000])  # a start killed while copying, a full disk...
    stale, fresh = (package.parent / f".{package.stem}.partial.{n}.pt2" for n in ("old", "new"))
    for partial in (stale, fresh):
        partial.write_bytes(b"half a package")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))  # left by a build killed 2 hours ago
    rebuilt = _copy_instead_of_building(monkeypatch, _package(directory))
    compiled = AotCompiledModel(model, tmp_path / "aot", "small", WEIGHTS)
    with torch.inference_mode():
        got = compiled(*_arguments())
        torch.testing.assert_close(got[0], model(*_arguments())[0], rtol=1e-5, atol=1e-6)
    assert rebuilt == [package] and compiled.source == "built"
    assert "compiled model package unusable: could not be loaded" in caplog.text
    assert not stale.exists() and fresh.exists()  # the fresh one may be another process's build


def test_a_package_made_for_another_setup_is_rebuilt(built, tmp_path, monkeypatch, caplog) -> None:
    model, directory = built
    shutil.copytree(directory, tmp_path / "aot")
    package = _package(tmp_path / "aot")
    key_file = package.with_name(package.name.replace(PACKAGE_SUFFIX, KEY_SUFFIX))
    key_file.write_text(key_file.read_text().replace(torch.__version__, "0.0.1"))
    rebuilt = _copy_instead_of_building(monkeypatch, _package(directory))
    compiled = AotCompiledModel(model, tmp_path / "aot", "small", WEIGHTS)
    with torch.inference_mode():
        compiled(*_arguments())
    assert rebuilt == [package] and compiled.source == "built"
    assert "made for another setup (differs in torch)" in caplog.text


def test_the_key_names_weights_structure_and_shapes() -> None:
    model = SmallAttentionModel()
    args = _arguments()
    digest = key_digest(package_key(model, args, WEIGHTS))
    assert key_digest(package_key(model, args, WEIGHTS)) == digest
    assert key_digest(package_key(model, args, WEIGHTS + "x")) != digest  # other checkpoint files
    assert key_digest(package_key(model, _arguments(length=13), WEIGHTS)) != digest  # other shapes
    swapped = SmallAttentionModel()
    swapped.out = nn.Sequential(nn.Linear(16, 8))  # e.g. a layer replaced by an FP8 one
    assert key_digest(package_key(swapped, args, WEIGHTS)) != digest
    assert key_digest(package_key(model.double(), (args[0].double(), args[1]), WEIGHTS)) != digest


def test_a_failed_export_falls_back_to_torch_compile_and_is_remembered(tmp_path, monkeypatch, caplog) -> None:
    model = SmallAttentionModel().eval()
    compiled_with: list[nn.Module] = []

    def cannot_export(model: nn.Module, args: tuple[object, ...], path: Path) -> None:
        raise RuntimeError("unsupported operator flash_attn_3::fwd")

    def compile_eagerly(model: nn.Module) -> nn.Module:  # torch.compile's work is not under test here
        compiled_with.append(model)
        return model

    def cannot_export_again(model: nn.Module, args: tuple[object, ...], path: Path) -> None:
        pytest.fail("a setup that failed before is exported again")

    monkeypatch.setattr(compiled_model, "build_package", cannot_export)
    monkeypatch.setattr(compiled_model.torch, "compile", compile_eagerly)
    first = AotCompiledModel(model, tmp_path, "small", WEIGHTS)
    with torch.inference_mode():
        torch.testing.assert_close(first(*_arguments())[0], model(*_arguments())[0])
    assert first.source == "torch.compile"
    assert "unsupported operator flash_attn_3::fwd" in caplog.text
    (note,) = tmp_path.glob("small-*.failed.txt")
    # the next start does not try again (it would cost minutes): torch.compile at once
    monkeypatch.setattr(compiled_model, "build_package", cannot_export_again)
    second = AotCompiledModel(model, tmp_path, "small", WEIGHTS)
    with torch.inference_mode():
        second(*_arguments())
    assert second.source == "torch.compile" and compiled_with == [model, model]
    assert "compiling failed before for this setup" in caplog.text


def test_fa3_failing_in_a_package_is_retried_with_sdpa(built, tmp_path, monkeypatch, caplog) -> None:
    from synchuman.nn import attention as attention_module

    model, directory = built
    monkeypatch.setattr(attention_module, "FLASH_ATTENTION3", "a FlashAttention-3 build")  # as on an H200
    attempts: list[str] = []

    def only_sdpa_exports(model: nn.Module, args: tuple[object, ...], path: Path) -> None:
        attempts.append(attention_module.get_attention_backend())
        if attention_module.get_attention_backend() != "sdpa":
            raise RuntimeError("flash_attn_3::_flash_attn_forward cannot be called from the package")
        shutil.copyfile(_package(directory), path)

    monkeypatch.setattr(compiled_model, "build_package", only_sdpa_exports)
    first = AotCompiledModel(model, tmp_path, "small", WEIGHTS)
    with torch.inference_mode():
        torch.testing.assert_close(first(*_arguments())[0], model(*_arguments())[0], rtol=1e-5, atol=1e-6)
    assert attempts == ["auto", "sdpa"] and first.source == "built"
    assert attention_module.get_attention_backend() == "auto"  # restored after the export
    assert "backend=sdpa" in first.package_path.with_name(first.package_path.stem + KEY_SUFFIX).read_text()
    # a restart skips the noted FlashAttention-3 setup and loads the SDPA package
    restarted = AotCompiledModel(model, tmp_path, "small", WEIGHTS)
    with torch.inference_mode():
        restarted(*_arguments())
    assert restarted.source == "loaded" and attempts == ["auto", "sdpa"]
    assert "failed before for this setup: skipping it" in caplog.text


def test_stage1_compile_uses_a_package_in_the_compile_cache(tiny_ckpts, tmp_path, monkeypatch) -> None:
    from services.stage1.backend import Stage1PipelineBackend
    from synchuman.checkpoints.layout import CheckpointLayout

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    backend = Stage1PipelineBackend.load(tiny_ckpts, "cpu", "fp32", compile_model=True)
    try:
        diffusion = backend.pipeline.diffusion
        assert isinstance(diffusion, AotCompiledModel)
        assert diffusion.directory == tmp_path / "cache" / "aot-packages"
        assert diffusion.weights_identity == files_identity(CheckpointLayout(tiny_ckpts).diffusion_2d3d)
        assert diffusion.sample_size == diffusion.model.sample_size  # the pipeline reads the model's fields
    finally:
        backend.close()
    dynamo = Stage1PipelineBackend.load(
        tiny_ckpts, "cpu", "fp32", compile_model=True, compiler="torch.compile"
    )
    try:
        assert hasattr(dynamo.pipeline.diffusion, "_orig_mod")
    finally:
        dynamo.close()

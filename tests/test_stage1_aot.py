"""The ahead-of-time compiled model (synchuman/pipelines/compiled_model.py), used by stage 1's --compile.

One real torch.export + AOTInductor build of a small attention model on the CPU (~25 s on two busy cores);
the rebuild paths copy that package instead of compiling again. Packages are verified in a real child process
(seconds each); crashing and hanging children are tests/aot_verifier_doubles.py. (A package of the tiny
stage-1 diffusion model itself takes ~5 min to build on this CPU, too slow for CI: measured by hand, its
2-step stage-1 output matched eager's, the views within 1/255 and the voxels exactly.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from synchuman.nn.attention import attention
from synchuman.pipelines import compiled_model
from synchuman.pipelines.compiled_model import (
    FAILED_SUFFIX,
    KEY_SUFFIX,
    PACKAGE_SUFFIX,
    VERIFIED_SUFFIX,
    AotCompiledModel,
    files_identity,
    key_digest,
    package_key,
)

WEIGHTS = "weights.safetensors:123:456"
VERIFIER_DOUBLES = Path(__file__).with_name("aot_verifier_doubles.py")


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
    (record,) = directory.glob(f"small-*{VERIFIED_SUFFIX}")  # a child process ran it before this one did
    assert json.loads(record.read_text())["max_relative_error"] < 1e-5
    return model, directory


def _package(directory: Path) -> Path:
    (path,) = directory.glob(f"small-*{PACKAGE_SUFFIX}")
    return path


def _verifier_double(mode: str) -> list[str]:
    """A verification command whose child crashes (``"crash"``) or never finishes (``"hang"``)."""
    return [sys.executable, str(VERIFIER_DOUBLES), mode]


def _compile_eagerly(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """torch.compile returns the model itself (its work is not under test); returns the compiled models."""
    compiled_with: list[nn.Module] = []

    def compile_eagerly(model: nn.Module) -> nn.Module:
        compiled_with.append(model)
        return model

    monkeypatch.setattr(compiled_model.torch, "compile", compile_eagerly)
    return compiled_with


def _never_loaded_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if this (the serving) process loads a package."""

    def load(path: Path, device: torch.device) -> None:
        pytest.fail(f"the serving process loaded the unverified package {path}")

    monkeypatch.setattr(compiled_model, "load_package", load)


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
    # a verified package is loaded without a child process (this one would crash)
    restarted = AotCompiledModel(model, directory, "small", WEIGHTS, verify_command=_verifier_double("crash"))
    with torch.inference_mode():
        got = restarted(*_arguments())
        expected = model(*_arguments())
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        assert restarted.source == "loaded"
        assert any(r.getMessage() == "compiled model package loaded" for r in caplog.records)
        assert "verifying" not in caplog.text
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
    assert "compiled model package unusable: the verification process (cannot load it)" in caplog.text
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

    def cannot_export(model: nn.Module, args: tuple[object, ...], path: Path) -> None:
        raise RuntimeError("unsupported operator flash_attn_3::fwd")

    def cannot_export_again(model: nn.Module, args: tuple[object, ...], path: Path) -> None:
        pytest.fail("a setup that failed before is exported again")

    monkeypatch.setattr(compiled_model, "build_package", cannot_export)
    compiled_with = _compile_eagerly(monkeypatch)
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


def test_a_new_package_that_crashes_its_verification_child_is_never_loaded(
    built, tmp_path, monkeypatch, caplog
) -> None:
    model, directory = built
    _copy_instead_of_building(monkeypatch, _package(directory))
    _never_loaded_here(monkeypatch)
    compiled_with = _compile_eagerly(monkeypatch)
    compiled = AotCompiledModel(model, tmp_path, "small", WEIGHTS, verify_command=_verifier_double("crash"))
    with torch.inference_mode():
        torch.testing.assert_close(compiled(*_arguments())[0], model(*_arguments())[0])
    assert compiled.source == "torch.compile" and compiled_with == [model]
    (note,) = tmp_path.glob(f"small-*{FAILED_SUFFIX}")
    assert note.read_text().startswith("verifying the new package: PackageVerificationError")
    assert "killed by signal SIGABRT" in note.read_text()
    assert "stand-in for a native crash" in caplog.text  # the child's stderr, in the log line
    assert not list(tmp_path.glob(f"*{VERIFIED_SUFFIX}"))


def _unverified_copy(directory: Path, destination: Path) -> Path:
    """A copy of ``directory`` without verification records (e.g. built by an older version)."""
    shutil.copytree(directory, destination)
    for record in destination.glob(f"*{VERIFIED_SUFFIX}"):
        record.unlink()
    return destination


def test_a_found_package_whose_verification_hangs_is_not_used(built, tmp_path, monkeypatch, caplog) -> None:
    model, directory = built
    packages = _unverified_copy(directory, tmp_path / "aot")
    _never_loaded_here(monkeypatch)
    _compile_eagerly(monkeypatch)
    monkeypatch.setattr(compiled_model, "build_package", lambda *a: pytest.fail("a found package is rebuilt"))
    compiled = AotCompiledModel(
        model, packages, "small", WEIGHTS, verify_command=_verifier_double("hang"), verify_timeout_s=2
    )
    with torch.inference_mode():
        compiled(*_arguments())
    assert compiled.source == "torch.compile"
    assert "did not finish within 2 s (killed)" in caplog.text
    (note,) = packages.glob(f"small-*{FAILED_SUFFIX}")
    assert note.read_text().startswith("verifying it: ")


def test_a_package_computing_something_else_is_not_used(built, tmp_path, monkeypatch, caplog) -> None:
    """Other weights under the same key (a change the key cannot see): the real child finds the mismatch."""
    _, directory = built
    packages = _unverified_copy(directory, tmp_path / "aot")
    torch.manual_seed(1)
    other = SmallAttentionModel().eval()
    _never_loaded_here(monkeypatch)
    _compile_eagerly(monkeypatch)
    compiled = AotCompiledModel(other, packages, "small", WEIGHTS)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(*_arguments())[0], other(*_arguments())[0])
    assert compiled.source == "torch.compile"
    assert "(its output differs from the eager model's) ended with exit status 3" in caplog.text
    assert "relative error" in caplog.text and not list(packages.glob(f"*{VERIFIED_SUFFIX}"))


def test_stage1_compile_uses_a_package_in_the_compile_cache(tiny_ckpts, tmp_path, monkeypatch) -> None:
    from services.stage1.backend import Stage1PipelineBackend
    from synchuman.checkpoints.layout import CheckpointLayout

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    backend = Stage1PipelineBackend.load(tiny_ckpts, "cpu", "fp32", compile_model=True, compiler="aot")
    try:
        diffusion = backend.pipeline.diffusion
        assert isinstance(diffusion, AotCompiledModel)
        assert diffusion.directory == tmp_path / "cache" / "aot-packages"
        assert diffusion.weights_identity == files_identity(CheckpointLayout(tiny_ckpts).diffusion_2d3d)
        assert diffusion.sample_size == diffusion.model.sample_size  # the pipeline reads the model's fields
    finally:
        backend.close()
    dynamo = Stage1PipelineBackend.load(tiny_ckpts, "cpu", "fp32", compile_model=True)  # the default
    try:
        assert hasattr(dynamo.pipeline.diffusion, "_orig_mod")
    finally:
        dynamo.close()


def test_serve_stage1_compiles_with_torch_compile_unless_aot_is_asked_for() -> None:
    """The ahead-of-time package is opt-in (experimental: a package crashed the process on an H200)."""
    import argparse

    from services.stage1 import main as stage1_main

    parser = argparse.ArgumentParser()
    stage1_main.add_arguments(parser)
    assert parser.parse_args(["--compile"]).compiler == "torch.compile"
    assert parser.parse_args(["--compile", "--compiler", "aot"]).compiler == "aot"
    assert "EXPERIMENTAL" in parser.format_help()

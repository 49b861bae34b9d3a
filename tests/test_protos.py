"""The wire contract: generated code is fresh, buf lint passes, the core library stays free of gRPC."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT, require_tool


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_passes(tmp_path) -> None:
    buf = require_tool(REPO_ROOT / "node_modules" / ".bin" / "buf", "buf (npm @bufbuild/buf)")
    descriptors = tmp_path / "contract.binpb"
    subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check", "--descriptor-set", str(descriptors)],
        cwd=REPO_ROOT, check=True, capture_output=True,
    )
    result = subprocess.run(
        [str(buf), "lint", str(descriptors), "--config", "protos/buf.yaml", "--exclude-path", "google"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_are_declared() -> None:
    from synchuman.v1 import preprocess_pb2, reconstruction_pb2, stage1_pb2, stage2_pb2

    names = {
        s.full_name
        for m in (preprocess_pb2, stage1_pb2, stage2_pb2, reconstruction_pb2)
        for s in m.DESCRIPTOR.services_by_name.values()
    }
    assert names == {
        "synchuman.v1.PreprocessService",
        "synchuman.v1.Stage1Service",
        "synchuman.v1.Stage2Service",
        "synchuman.v1.ReconstructionService",
    }


CORE_MODULES = ["synchuman_cli.main", "synchuman.preprocess", "synchuman.pipelines", "synchuman.models"]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_library_does_not_import_grpc(module: str) -> None:
    code = f"import sys, {module}; print([m for m in sys.modules if m.split('.')[0] == 'grpc'])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

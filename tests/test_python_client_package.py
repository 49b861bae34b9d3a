"""The ``synchuman-client`` distribution (clients/python): its wheel holds the client alone and installs into
a fresh venv that has only grpcio, protobuf and googleapis-common-protos (no torch, no server code); its
generated wire modules coexist with the server's ``synchuman.v1`` in one process; its error type decodes
every ``google.rpc`` detail the services send. No server needed (tests/test_python_client.py has the live
ones)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import grpc
from conftest import REPO_ROOT
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from packaging.requirements import Requirement

CLIENT = REPO_ROOT / "clients" / "python"
#: What the wheel may weigh at most (about 31 KB when this test was written).
MAX_WHEEL_BYTES = 100_000


def _run(args: list[str], cwd: Path, timeout_s: float = 120) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def _closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` and everything they require (extras left out)."""
    seen: set[str] = set()
    while names:
        name = names.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                names.append(requirement.name)
    return seen


def _link_distributions(names: set[str], folder: Path) -> None:
    """Make the installed files of distributions ``names`` (code and metadata) importable from ``folder`` by
    symbolic links, the second path level at most (namespace packages such as ``google`` stay shared)."""
    for name in names:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or ():
            parts = Path(file).parts
            if parts[0] == ".." or "__pycache__" in parts:
                continue
            link = folder.joinpath(*parts[:2])
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(str(distribution.locate_file(Path(*parts[:2])))))


def test_the_wheel_installs_alone_into_a_fresh_venv_without_torch(tmp_path):
    """Builds the wheel as CI does (make client-wheel runs the same pip command) and installs it offline."""
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(CLIENT)]
    _run([sys.executable, "-m", "pip", *build], tmp_path)
    wheel = next(tmp_path.glob("synchuman_client-*.whl"))
    size = wheel.stat().st_size
    print(f"\n{wheel.name}: {size} bytes")
    assert size < MAX_WHEEL_BYTES
    names = zipfile.ZipFile(wheel).namelist()
    metadata = wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"synchuman_client", metadata}
    assert "synchuman_client/_proto/reconstruction_pb2_grpc.py" in names
    assert "synchuman_client/py.typed" in names and "synchuman_client/_proto/common_pb2.pyi" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], tmp_path)
    dependencies = [Requirement(r).name for r in importlib.metadata.requires("synchuman-client") or ()
                    if "extra ==" not in r]
    assert sorted(dependencies) == ["googleapis-common-protos", "grpcio", "protobuf"]
    deps = tmp_path / "deps"
    _link_distributions(_closure(dependencies), deps)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path)
    (Path(site.strip()) / "deps.pth").write_text(f"{deps}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "check"], tmp_path)
    probe = (
        "import importlib.util, sys, synchuman_client as c\n"
        "job = c.reconstruction_pb2.Job(id='x', options=c.JobOptions(profile='web'))\n"
        "assert c.Job.FromString(job.SerializeToString()) == job\n"
        "assert c.AsyncClient and c.Client('127.0.0.1:1').stub.SubmitJob\n"
        "missing = [m for m in ('torch', 'numpy', 'PIL', 'synchuman', 'services', 'gateway')"
        " if importlib.util.find_spec(m) is not None]\n"
        "assert not missing, missing\n"
        "print(c.__file__)\n"
    )
    assert _run([str(python), "-c", probe], tmp_path).startswith(str(venv))


def test_the_client_and_server_wire_modules_load_in_one_process_in_either_order(tmp_path):
    """The two generated copies register the same .proto files in protobuf's default pool: identical files
    are accepted twice and the message classes are shared (a difference would fail the second import)."""
    check = (
        "from synchuman_client._proto import common_pb2 as c, reconstruction_pb2 as r\n"
        "from synchuman.v1 import common_pb2 as sc, reconstruction_pb2 as sr\n"
        "assert r.Job is sr.Job and c.JobOptions is sc.JobOptions\n"
        "assert r.SubmitJobStart(options=sc.JobOptions(profile='web')).options.profile == 'web'\n"
    )
    server_first = "\n".join([*check.splitlines()[1::-1], *check.splitlines()[2:]])
    for code in (check, server_first):
        _run([sys.executable, "-c", code], REPO_ROOT)


def test_dependency_floors_are_the_generated_code_versions():
    """grpcio and protobuf floors of clients/python/pyproject.toml equal what the generated code checks at
    import (after a grpcio-tools upgrade and `make protos` they must move too)."""
    generated = CLIENT / "src" / "synchuman_client" / "_proto"
    stub = (generated / "reconstruction_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", stub).group(1)
    messages = (generated / "common_pb2.py").read_text()
    protobuf_version = re.search(r"Protobuf Python Version: ([\d.]+)", messages)
    pyproject = (CLIENT / "pyproject.toml").read_text()
    assert f'"grpcio>={grpc_version}"' in pyproject
    major = protobuf_version.group(1).split(".")[0]
    assert f'"protobuf>={protobuf_version.group(1)},<{int(major) + 1}"' in pyproject


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_every_detail_type_is_decoded_from_a_status():
    from synchuman_client import InputQualityReport, SyncHumanError

    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(10_500_000_000)
    details = [
        retry,
        error_details_pb2.ErrorInfo(reason="TOO_MANY_PENDING_JOBS", metadata={"n": "8"}),
        error_details_pb2.QuotaFailure(violations=[{"subject": "jobs", "description": "8 pending"}]),
        error_details_pb2.BadRequest(field_violations=[{"field": "image", "description": "empty mask"}]),
        InputQualityReport(width=640, issues=[{"code": "EMPTY_MASK", "message": "no person"}]),
        error_details_pb2.Help(links=[{"url": "https://example.org"}]),
    ]
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message="8 jobs are pending", details=[_packed(d) for d in details]
    )
    error = SyncHumanError.from_status(status)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(error) == "RESOURCE_EXHAUSTED: 8 jobs are pending"
    assert error.retry_after_s == 10.5
    assert error.details.error_info.metadata["n"] == "8"
    assert error.details.quota_failure.violations[0].subject == "jobs"
    assert error.details.bad_request.field_violations[0].field == "image"
    assert error.details.input_quality.issues[0].code == "EMPTY_MASK"
    assert error.details.output_quality is None
    assert len(error.details.other) == 1, "a detail type the client does not know stays packed"

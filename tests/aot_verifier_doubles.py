"""Stand-ins for the package verification child (``python -m synchuman.pipelines.package_verifier``), run as
a program by tests/test_stage1_aot.py in its place: ``python tests/aot_verifier_doubles.py MODE PACKAGE
INPUTS --device DEVICE ...``; MODE ``crash`` dies of SIGABRT like a native crash, ``hang`` never finishes."""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    mode = sys.argv[1]
    if mode == "crash":
        print("Fatal Python error: Aborted (stand-in for a native crash)", file=sys.stderr, flush=True)
        os.abort()
    if mode == "hang":
        time.sleep(3600)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()

"""Trying an ahead-of-time compiled package in a child process before the serving process loads it.

Running a freshly built AOTInductor package has killed the process running it (a native crash on an H200, no
Python exception to catch), so :mod:`synchuman.pipelines.compiled_model` only loads a package after
:func:`verify_in_child` saw a separate Python process load it, run one forward on the example arguments and
match the eager model's output. A crash (signal), an error, a timeout or a mismatch raises
:class:`PackageVerificationError` in the parent, which then does without that package.

The child is this module run as a program (``python -m synchuman.pipelines.package_verifier PACKAGE INPUTS
--device DEVICE [--import MODULE ...]``): ``INPUTS`` is a ``torch.save`` file of ``{"args": [...], "expected":
[...]}`` (CPU tensors; ``expected``: the eager output's tensors in pytree order). It prints one JSON line
(``max_relative_error``, ``seconds``) and exits 0 when every output tensor is within
:data:`RELATIVE_TOLERANCE`, :data:`EXIT_MISMATCH` when not, :data:`EXIT_UNLOADABLE` when the package raises
while loading (a truncated or foreign file, which a rebuild replaces).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

#: A package's output may differ from eager by this much (relative L2 norm per output tensor): fused fp16
#: kernels differ by ~1e-3; a broken package is off by ~1.
RELATIVE_TOLERANCE = 0.05
#: The child's exit status when the package ran but its output differs from eager.
EXIT_MISMATCH = 3
#: The child's exit status when loading the package raised (not a crash).
EXIT_UNLOADABLE = 4
#: Seconds the child may take (importing torch, unpacking and loading a multi-GB package, one forward; not
#: yet measured on a GPU). Bounded because a start may build and verify two packages within a start-up probe.
VERIFY_TIMEOUT_S = 300.0
#: How much of the child's output a failure message keeps (its end: a crash's stack, the last error).
OUTPUT_TAIL_CHARS = 1500


class PackageVerificationError(RuntimeError):
    """The package crashed, failed, hung or computed something else in the child process; ``unloadable``:
    it could not even be loaded (a rebuild may help; a crash or a wrong result would recur)."""

    def __init__(self, message: str, unloadable: bool = False) -> None:
        super().__init__(message)
        self.unloadable = unloadable


def default_command() -> list[str]:
    """How the child is started: this interpreter, with native crashes' Python stacks on stderr."""
    return [sys.executable, "-X", "faulthandler", "-m", __name__]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``|got - expected| / |expected|`` (L2 norms, in fp64) over the finite entries of ``expected``;
    ``inf`` when shapes differ or the two are not finite at the same entries."""
    if got.shape != expected.shape:
        return float("inf")
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(got)):
        return float("inf")
    difference = (got[finite] - expected[finite]).norm().item()
    return difference / max(expected[finite].norm().item(), 1e-12)


def max_relative_error(got: Sequence[Any], expected: Sequence[torch.Tensor]) -> float:
    """The largest :func:`relative_error` over paired output tensors; ``inf`` if they do not pair up."""
    if len(got) != len(expected) or not all(isinstance(g, torch.Tensor) for g in got):
        return float("inf")
    return max((relative_error(g, e) for g, e in zip(got, expected, strict=True)), default=0.0)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "").strip()[-OUTPUT_TAIL_CHARS:]


def verify_in_child(
    package: Path,
    args: Sequence[Any],
    expected: Any,
    device: torch.device,
    imports: Sequence[str] = (),
    command: Sequence[str] | None = None,
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> dict[str, Any]:
    """Run ``package`` once on ``args`` in a child process and compare with ``expected`` (the eager output);
    ``imports``: modules the child imports first (custom operators the package calls); ``command``: the
    child's argv prefix (default :func:`default_command`). Returns the child's report (``max_relative_error``,
    ``seconds``); raises :class:`PackageVerificationError` naming the exit signal/status and the child's
    output tail."""
    command = list(command) if command is not None else default_command()
    expected_tensors = [t.detach().cpu() for t in tree_leaves(expected) if isinstance(t, torch.Tensor)]
    cpu_args = [a.detach().cpu() if isinstance(a, torch.Tensor) else a for a in args]
    with tempfile.TemporaryDirectory(prefix="synchuman-verify-") as folder:
        inputs = Path(folder) / "inputs.pt"
        torch.save({"args": cpu_args, "expected": expected_tensors}, inputs)
        argv = [*command, str(package), str(inputs), "--device", str(device)]
        for module in imports:
            argv += ["--import", module]
        env = dict(os.environ)
        # the child imports this package from wherever the parent did (a checkout, not only site-packages)
        source_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL, check=False
            )
        except subprocess.TimeoutExpired as timeout:
            raise PackageVerificationError(
                f"the verification process did not finish within {timeout_s:g} s (killed); its output: "
                f"{_tail(timeout.stderr) or _tail(timeout.stdout) or '(none)'}"
            ) from None
        except OSError as error:  # the command cannot be started
            raise PackageVerificationError(f"the verification process could not start: {error}") from error
    if done.returncode != 0:
        what = {EXIT_MISMATCH: "its output differs from the eager model's", EXIT_UNLOADABLE: "cannot load it"}
        output = _tail(done.stderr) or _tail(done.stdout) or "(none)"
        raise PackageVerificationError(
            f"the verification process ({what.get(done.returncode, 'failed')}) ended with "
            f"{_describe_exit(done.returncode)}; its output: {output}",
            unloadable=done.returncode == EXIT_UNLOADABLE,
        )
    try:
        return json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PackageVerificationError(
            f"the verification process printed no report: {_tail(done.stdout) or '(nothing)'}"
        ) from None


def _check(package: Path, inputs: Path, device: torch.device) -> int:
    """The child's work: load ``package``, run it on the saved arguments, compare, report."""
    from synchuman.pipelines.compiled_model import load_package

    started = time.perf_counter()
    saved = torch.load(inputs, weights_only=True)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in saved["args"]]
    try:
        runner = load_package(package, device)
    except Exception as error:  # a native crash is not caught: the parent sees the signal
        print(f"could not load the package: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_UNLOADABLE
    with torch.inference_mode():
        got = tree_leaves(runner(*args))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    error = max_relative_error(got, saved["expected"])
    report = {"max_relative_error": error, "seconds": round(time.perf_counter() - started, 2)}
    print(json.dumps(report), flush=True)
    if not error <= RELATIVE_TOLERANCE:
        message = f"package output differs from eager: relative error {error:.3g} > {RELATIVE_TOLERANCE}"
        print(message, file=sys.stderr)
        return EXIT_MISMATCH
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run an AOTInductor package once and compare with eager")
    parser.add_argument("package", type=Path)
    parser.add_argument("inputs", type=Path, help="torch.save file: {'args': [...], 'expected': [...]}")
    parser.add_argument("--device", required=True)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    options = parser.parse_args(argv)
    for module in options.imports:
        importlib.import_module(module)
    return _check(options.package, options.inputs, torch.device(options.device))


if __name__ == "__main__":
    sys.exit(main())

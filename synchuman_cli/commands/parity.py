"""``synchuman parity PATH...``: compare our models with upstream reference fixtures."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``parity`` subcommand."""
    parser = subparsers.add_parser(
        "parity",
        help="run every parity fixture folder under PATH(s) and compare with the recorded upstream outputs",
        description="Finds every folder holding config.json, model.safetensors, io.safetensors and meta.json "
        "under the given paths, rebuilds our implementation, replays the recorded call and prints one "
        "PASS/FAIL line per fixture with the max abs error. Exit status 1 if any fixture fails.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="fixture folders or their parents")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the fixtures; 0 if all pass, 1 otherwise."""
    import sys

    import torch

    from synchuman.parity.runner import run_parity
    from synchuman_cli.main import UserError

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device cpu")
    try:
        results = run_parity(args.paths, device=str(device), out=sys.stdout)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not results:
        raise UserError(
            f"no fixture folders (config.json + model.safetensors + io.safetensors + meta.json) under "
            f"{' '.join(args.paths)}"
        )
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed}/{len(results)} fixtures passed")
    return 1 if failed else 0

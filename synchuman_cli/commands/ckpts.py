"""``synchuman ckpts pull|verify|make-tiny|make-random|ensure``: obtain, check and fake checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path


def _root_default() -> Path:
    from synchuman.checkpoints.layout import default_root

    return default_root()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ckpts`` subcommand and its five actions."""
    parser = subparsers.add_parser(
        "ckpts",
        help="download (pull), check (verify), fake (make-tiny) or guarantee (ensure) the checkpoint tree",
        description="The checkpoint tree mirrors the upstream release (OneStage/, SecondStage/) plus dinov2/ "
        "and segmentation/. Default root: $SYNCHUMAN_CKPTS or <repo>/ckpts.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_root(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", type=Path, default=None,
                       help="checkpoint root (default: $SYNCHUMAN_CKPTS or ckpts)")

    def with_network(p: argparse.ArgumentParser) -> None:
        p.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                       help="seconds to wait for each download host before declaring the machine offline")

    pull = actions.add_parser("pull", help="download the real weights (needs network access)",
                              description="Downloads the SyncHuman release (HF xishushu/SyncHuman, endpoint "
                              "$HF_ENDPOINT), DINOv2 ViT-L/14-reg4 ($SYNCHUMAN_DINOV2_URL), the fixed prompt "
                              "embeddings ($SYNCHUMAN_PROMPT_EMBEDS_URL) and the segmenter, then verifies.")
    with_root(pull)
    with_network(pull)
    pull.add_argument("--force", action="store_true", help="download files again even when present")
    pull.set_defaults(func=run_pull)

    verify = actions.add_parser("verify", help="check every expected file, key and shape",
                                description="Builds every model on the meta device from the config.json on "
                                "disk and compares its keys and shapes with the weights file headers. Exit 1 "
                                "if anything is missing or wrong.")
    verify.add_argument("dir", nargs="?", type=Path, default=None, metavar="DIR",
                        help="checkpoint root (default: $SYNCHUMAN_CKPTS or ckpts)")
    verify.add_argument("--quiet", action="store_true", help="print only problems")
    verify.set_defaults(func=run_verify)

    tiny = actions.add_parser("make-tiny", help="write tiny RANDOM checkpoints in the real layout (tests)",
                              description="Writes tiny models with random weights in exactly the real "
                              "layout. Their outputs are meaningless; they exercise loading and serving.")
    tiny.add_argument("dir", type=Path, metavar="DIR", help="checkpoint root to write")
    tiny.add_argument("--seed", type=int, default=0, help="parameter seed (default 0)")
    tiny.set_defaults(func=run_make_tiny)

    random = actions.add_parser("make-random", help="write FULL-SIZE models with RANDOM weights (benchmarks)",
                                description="Writes every model at full size with random, well-scaled "
                                "weights in the real layout (~9 GB in fp16), drawn on the GPU when one is "
                                "available. For speed/memory benchmarks only: outputs are meaningless.")
    random.add_argument("dir", type=Path, metavar="DIR", help="checkpoint root to write")
    random.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                        help="storage dtype of the parameters (default float16; DINOv2 stays float32)")
    random.add_argument("--device", default="auto", help="where to draw the weights (default: cuda if any)")
    random.add_argument("--parts", default="dinov2,stage1,stage2",
                        help="comma-separated parts to write (default: dinov2,stage1,stage2)")
    random.add_argument("--seed", type=int, default=0, help="parameter seed (default 0)")
    random.set_defaults(func=run_make_random)

    ensure = actions.add_parser("ensure", help="verify; else pull; offline: tiny random checkpoints + banner")
    with_root(ensure)
    with_network(ensure)
    ensure.add_argument("--no-tiny", action="store_true",
                        help="fail instead of writing tiny checkpoints offline")
    ensure.set_defaults(func=run_ensure)


def _print_findings(findings: list, quiet: bool) -> int:
    """Print the report; returns the number of errors."""
    errors = [f for f in findings if f.fatal]
    for finding in findings:
        if not (quiet and finding.ok):
            print(finding)
    return len(errors)


def run_verify(args: argparse.Namespace) -> int:
    """0 when the tree verifies, 1 otherwise."""
    from synchuman.checkpoints.verify import verify_tree, weights_kind

    root = args.dir or _root_default()
    errors = _print_findings(verify_tree(root), args.quiet)
    kind = weights_kind(root)
    if errors:
        print(f"{root}: {errors} problem(s)")
        return 1
    print(f"{root}: all checkpoints present and consistent ({kind} weights)")
    return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    """Write the tiny tree; 0 on success."""
    from synchuman.checkpoints.tiny import write_tiny_tree

    for warning in write_tiny_tree(args.dir, args.seed):
        print(f"warning: {warning}")
    print(f"tiny random checkpoints written to {args.dir} (outputs made with them are meaningless)")
    return 0


def run_make_random(args: argparse.Namespace) -> int:
    """Write the full-size random tree, then verify the parts written; 0 when they verify."""
    import torch

    from synchuman.checkpoints.full_size import PARTS, write_random_tree
    from synchuman.checkpoints.loading import parse_dtype
    from synchuman.checkpoints.verify import verify_tree
    from synchuman_cli.main import UserError

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise UserError(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    total = write_random_tree(args.dir, parse_dtype(args.dtype), device, args.seed, parts)
    print(f"{total / 1e9:.2f} GB of full-size RANDOM checkpoints written to {args.dir} (meaningless outputs)")
    errors = _print_findings(verify_tree(args.dir, parts), quiet=True)
    return 1 if errors else 0


def run_pull(args: argparse.Namespace) -> int:
    """Download then verify; offline is a user error (exit 2) raised within the connect timeout."""
    from synchuman.checkpoints.pull import OfflineError, pull
    from synchuman.checkpoints.verify import verify_tree
    from synchuman_cli.main import UserError

    root = args.root or _root_default()
    try:
        warnings = pull(root, connect_timeout_s=args.connect_timeout, force=args.force)
    except OfflineError as exc:
        raise UserError(str(exc)) from None
    for warning in warnings:
        print(f"warning: {warning}")
    errors = _print_findings(verify_tree(root), quiet=True)
    if errors:
        print(f"{root}: downloaded, but {errors} problem(s) remain")
        return 1
    print(f"{root}: downloaded and verified")
    return 0


def run_ensure(args: argparse.Namespace) -> int:
    """0 when a verified tree (real or tiny) is in place."""
    from synchuman.checkpoints.ensure import EnsureError, ensure
    from synchuman_cli.main import UserError

    try:
        root = args.root or _root_default()
        ensure(root, allow_tiny=not args.no_tiny, connect_timeout_s=args.connect_timeout)
    except EnsureError as exc:
        raise UserError(str(exc)) from None
    return 0

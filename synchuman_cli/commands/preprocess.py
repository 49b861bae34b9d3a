"""``synchuman preprocess INPUT -o OUTPUT.png``: the preprocess stage locally (same code as the service)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``preprocess`` subcommand."""
    parser = subparsers.add_parser(
        "preprocess",
        help="decode a photo, find the person, write the framed 768x768 RGBA stage-1 input",
        description="Runs the preprocess stage without a server: decode (EXIF orientation applied), person "
        "mask (the input's alpha when it has one, else a local segmentation model), quality gate, framing. "
        "Prints the quality report. Exit status 2 with a one-line reason when the input is unusable.",
    )
    parser.add_argument("input", metavar="INPUT", help="photo (JPEG, PNG, WebP, ...)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT.png", help="framed 768x768 RGBA PNG")
    parser.add_argument("--mask", metavar="MASK.png",
                        help="also write the 8-bit person mask at the input's size")
    parser.add_argument("--conditioning", metavar="COND.png", help="also write the 518x518 conditioning crop")
    parser.add_argument("--report", metavar="REPORT.json", help="also write the quality report as JSON")
    parser.add_argument("--segmenter", default="", metavar="NAME",
                        help="segmentation model in the segmentation folder (default: u2netp); "
                        "'rembg:NAME' runs it through the optional rembg package")
    parser.add_argument("--segmentation-dir", metavar="DIR",
                        help="model folder (default: ckpts/segmentation)")
    parser.add_argument("--ignore-alpha", action="store_true", help="segment even if the input has alpha")
    parser.add_argument("--alpha-matting", action="store_true", help="refine the mask edge (slower)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Preprocess one file; 0 on success (warnings included), UserError on bad input."""
    import json
    from pathlib import Path

    from PIL import Image

    from synchuman.options import PreprocessOptions
    from synchuman.preprocess.errors import PreprocessError, QualityGateError
    from synchuman.preprocess.pipeline import preprocess
    from synchuman_cli.main import UserError

    source = Path(args.input)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {source}: {exc.strerror or exc}") from None
    options = PreprocessOptions(
        segmenter=args.segmenter,
        ignore_alpha=args.ignore_alpha,
        alpha_matting=args.alpha_matting,
        segmentation_dir=Path(args.segmentation_dir) if args.segmentation_dir else None,
    )
    try:
        result = preprocess(data, options)
    except QualityGateError as exc:
        if args.report:
            Path(args.report).write_text(json.dumps(exc.report.to_dict(), indent=2) + "\n")
        raise UserError(f"{source}: {exc}") from None
    except PreprocessError as exc:
        raise UserError(f"{source}: {exc}") from None
    try:
        Image.fromarray(result.framed, "RGBA").save(args.output, format="PNG")
        if args.mask:
            Image.fromarray(result.mask, "L").save(args.mask, format="PNG")
        if args.conditioning:
            Image.fromarray(result.conditioning, "RGB").save(args.conditioning, format="PNG")
        if args.report:
            Path(args.report).write_text(json.dumps(result.report.to_dict(), indent=2) + "\n")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write the output: {exc}") from None
    print(result.report.summary())
    print(f"wrote {args.output} ({sum(result.timings.values()):.2f} s)")
    return 0

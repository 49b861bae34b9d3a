"""``synchuman serve preprocess``: the PreprocessService process (decode, segment, frame, check; CPU)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.common.stage_server import (
    StageSpec,
    access_from_args,
    add_server_arguments,
    limits_from_args,
    serve_forever,
)
from synchuman.options import PreprocessOptions
from synchuman.preprocess.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from synchuman.stage_catalog import PREPROCESS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the preprocess service."""
    concurrency = max(1, (os.cpu_count() or 2) // 2)
    add_server_arguments(parser, PREPROCESS.service, concurrency=concurrency, max_queue=16)
    parser.add_argument("--segmentation-dir", metavar="DIR",
                        help="segmentation models (default: $SYNCHUMAN_CKPTS/segmentation or "
                        "./ckpts/segmentation)")
    parser.add_argument("--segmenter", default="", metavar="NAME",
                        help="model for requests that name none (default: u2netp)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest accepted image in pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                        help=f"largest accepted upload in bytes (default {DEFAULT_MAX_BYTES})")


def build_spec(args: argparse.Namespace) -> StageSpec:
    """How to build the service from parsed options (the segmenter loads in ``load_backend``)."""
    from services.preprocess.backend import PreprocessBackend
    from services.preprocess.service import PreprocessServicer
    from synchuman.v1 import preprocess_pb2_grpc

    defaults = PreprocessOptions(
        segmenter=args.segmenter,
        segmentation_dir=Path(args.segmentation_dir) if args.segmentation_dir else None,
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
    )
    return StageSpec(
        stage=PREPROCESS,
        make_servicer=PreprocessServicer,
        add_servicer=preprocess_pb2_grpc.add_PreprocessServiceServicer_to_server,
        load_backend=lambda: PreprocessBackend.load(defaults),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit status 3 when the default segmenter cannot be loaded."""
    limits = limits_from_args(args, typical_job_s=1.0)
    return serve_forever(
        build_spec(args), args.address, limits, args.metrics_port, access_from_args(args), args.otlp_endpoint
    )

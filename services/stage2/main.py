"""``synchuman serve stage2``: the Stage2Service process (latent flow, decoders, post-processing, GLB)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.arguments import CommandLineError, non_negative_int_or_auto
from services.common.gpu_share import add_gpu_share_arguments, gpu_turn_from_args
from services.common.stage_server import (
    StageSpec,
    access_from_args,
    add_stage_arguments,
    limits_from_args,
    resolve_device,
    serve_forever,
)
from synchuman.stage_catalog import RECONSTRUCTION

if TYPE_CHECKING:
    from services.stage2.backend import Stage2PipelineBackend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the stage-2 service."""
    add_stage_arguments(parser, RECONSTRUCTION.service)
    parser.add_argument(
        "--gaussian-views",
        default="auto",
        type=non_negative_int_or_auto,
        metavar="N",
        help="Gaussian renders added to the texture bake (auto: 95 as upstream on CUDA, 0 on CPU, where only "
        "the generated views are baked)",
    )
    parser.add_argument(
        "--gaussian-resolution",
        type=int,
        default=1024,
        metavar="PX",
        help="size of those renders (default 1024)",
    )
    add_gpu_share_arguments(parser, priority=False)


def build_spec(args: argparse.Namespace) -> StageSpec:
    """How to build the service from parsed options (models load in ``load_backend``)."""
    from services.stage2.service import Stage2Servicer
    from synchuman.v1 import stage2_pb2_grpc

    device, dtype = resolve_device(args.device, args.dtype)
    if args.gaussian_views == "auto":
        render_views = 0 if device == "cpu" else 95
    else:
        render_views = args.gaussian_views
    gpu_turn = gpu_turn_from_args(args, device)

    def load_backend() -> Stage2PipelineBackend:
        from services.stage2.backend import Stage2PipelineBackend

        return Stage2PipelineBackend.load(
            Path(args.ckpts) if args.ckpts else None,
            device,
            dtype,
            render_views=render_views,
            render_resolution=args.gaussian_resolution,
            gpu_turn=gpu_turn,
            max_wait_s=args.gpu_share_max_wait,
        )

    return StageSpec(
        stage=RECONSTRUCTION,
        make_servicer=Stage2Servicer,
        add_servicer=stage2_pb2_grpc.add_Stage2ServiceServicer_to_server,
        load_backend=load_backend,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit status 3 when the checkpoints cannot be loaded."""
    if args.gpu_share_max_wait < 0:
        raise CommandLineError(f"--gpu-share-max-wait must be >= 0 seconds, got {args.gpu_share_max_wait}")
    return serve_forever(
        build_spec(args),
        args.address,
        limits_from_args(args, typical_job_s=20.0),
        args.metrics_port,
        access_from_args(args),
        args.otlp_endpoint,
    )

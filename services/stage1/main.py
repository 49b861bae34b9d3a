"""``synchuman serve stage1``: the Stage1Service process (multiview diffusion + sparse structure)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.arguments import CommandLineError
from services.common.gpu_share import TurnHoldingBackend, add_gpu_share_arguments, gpu_turn_from_args
from services.common.stage_server import (
    StageSpec,
    access_from_args,
    add_stage_arguments,
    limits_from_args,
    resolve_device,
    serve_forever,
)
from synchuman.stage_catalog import MULTIVIEW

if TYPE_CHECKING:
    from services.stage1.backend import Stage1PipelineBackend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the stage-1 service."""
    add_stage_arguments(parser, MULTIVIEW.service)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the 2D-3D diffusion model at start-up: the first start's warm-up compiles it (minutes "
        "on a GPU; the service stays NOT_SERVING meanwhile), then the 50-step loop runs ~30 %% faster "
        "(measured in the service on an H200: 12.2 s -> 9.1 s; bench/RESULTS.md); see --compiler",
    )
    parser.add_argument(
        "--compiler",
        choices=("torch.compile", "aot"),
        default="torch.compile",
        help="with --compile: torch.compile (default; restarts reuse its caches in $TORCHINDUCTOR_CACHE_DIR "
        "but trace the model again: 40-43 s to SERVING on an H200). aot: EXPERIMENTAL, exports and compiles "
        "the model ahead of time into a package in $TORCHINDUCTOR_CACHE_DIR/aot-packages that restarts load "
        "without tracing; on an H200 (torch 2.11, CUDA 13) running a new package crashed the process, so a "
        "package is first tried in a child process and used only if it matches the eager model (else "
        "torch.compile); not with --cfg-device or CUDA graphs (torch.compile then)",
    )
    parser.add_argument(
        "--cfg-device",
        default=None,
        metavar="DEVICE",
        help="a second GPU (e.g. cuda:1) that computes the unconditional half of classifier-free guidance "
        "in parallel: about halves a request's sampling time, and holds a second copy of the diffusion "
        "model (bench/RESULTS.md)",
    )
    parser.add_argument(
        "--cuda-graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="with --compile, replay each denoising forward as one CUDA graph (takes the host's kernel "
        "launches out of the loop; keeps a static memory pool). auto (default): on with --cfg-device",
    )
    add_gpu_share_arguments(parser, priority=True)
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="opt-in: the diffusion model's large Linear layers as FP8 (e4m3) matrix products (needs a GPU "
        "of compute capability >= 8.9). Faster, but the views differ from the fp16 default "
        "(bench/RESULTS.md reports by how much)",
    )


def build_spec(args: argparse.Namespace) -> StageSpec:
    """How to build the service from parsed options (models load in ``load_backend``)."""
    from services.stage1.service import Stage1Servicer
    from synchuman.v1 import stage1_pb2_grpc

    device, dtype = resolve_device(args.device, args.dtype)
    gpu_turn = gpu_turn_from_args(args, device)  # one GPU with stage 2: it waits while a request runs here

    def load_backend() -> Stage1PipelineBackend | TurnHoldingBackend:
        from services.stage1.backend import Stage1PipelineBackend

        root = Path(args.ckpts) if args.ckpts else None
        backend = Stage1PipelineBackend.load(
            root,
            device,
            dtype,
            compile_model=args.compile,
            cfg_device=args.cfg_device,
            cuda_graphs={"auto": None, "on": True, "off": False}[args.cuda_graphs],
            fp8=args.fp8,
            compiler=args.compiler,
        )
        return TurnHoldingBackend(backend, gpu_turn) if gpu_turn else backend

    return StageSpec(
        stage=MULTIVIEW,
        make_servicer=Stage1Servicer,
        add_servicer=stage1_pb2_grpc.add_Stage1ServiceServicer_to_server,
        load_backend=load_backend,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit status 3 when the checkpoints cannot be loaded."""
    if args.cuda_graphs == "on" and not args.compile:
        raise CommandLineError("--cuda-graphs on replays the compiled model; add --compile")
    if args.fp8:
        from synchuman.nn.fp8_linear import fp8_support_problem

        problem = fp8_support_problem(resolve_device(args.device, args.dtype)[0])
        if problem is not None:
            raise CommandLineError(f"--fp8: {problem}")
    return serve_forever(
        build_spec(args),
        args.address,
        limits_from_args(args, typical_job_s=15.0),
        args.metrics_port,
        access_from_args(args),
        args.otlp_endpoint,
    )

"""``synchuman reconstruct PHOTO -o person.glb``: one photo to a textured 3D human through the gateway.

Talks to a running gateway (``--gateway``, default the embedded one on 127.0.0.1:50051) with a progress bar
per phase. When no gateway answers, ``--start-servers auto`` (the default) starts the embedded servers for the
duration of the command (``always``: start them even if a gateway runs; ``never``: fail instead).
``--in-process`` runs the same pipeline in this process instead (no servers; ``--ckpts`` / ``--device``
choose the weights and the device), with the same options, progress bars, files and report.
"""

from __future__ import annotations

import argparse
import os

from services.common.arguments import CommandLineError
from services.common.endpoints import default_address
from services.common.tls import add_client_tls_arguments, client_tls_from_args

#: ``--format`` choice -> the ``synchuman.v1.OutputFormat`` it asks for. Every extra file the job made is
#: written beside the GLB (:func:`download_names`): ply gaussians.ply, obj mesh_obj.zip, usdz person.usdz,
#: preview preview.png + turntable.mp4 + turntable.webp, rigged person_rigged.glb (also ``--rig``), views
#: the 10 generated PNGs.
FORMATS = {
    "ply": "OUTPUT_FORMAT_GAUSSIAN_PLY",
    "obj": "OUTPUT_FORMAT_OBJ",
    "usdz": "OUTPUT_FORMAT_USDZ",
    "preview": "OUTPUT_FORMAT_PREVIEW",
    "rigged": "OUTPUT_FORMAT_RIGGED_GLB",
    "views": "OUTPUT_FORMAT_MULTIVIEW_PNG",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reconstruct`` subcommand."""
    parser = subparsers.add_parser(
        "reconstruct",
        help="turn a photo of a person into a textured GLB (through the gateway)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("photo", metavar="PHOTO", help="photo of one person (JPEG, PNG, WebP, ...)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.glb", help="where to write the GLB")
    parser.add_argument(
        "--gateway", default=default_address("gateway"), help="gateway gRPC address (host:port)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SYNCHUMAN_GATEWAY_AUTH_TOKEN", ""),
        help="the gateway's bearer token, when it requires one (default: $SYNCHUMAN_GATEWAY_AUTH_TOKEN)",
    )
    add_client_tls_arguments(parser, "tls", "SYNCHUMAN_GATEWAY_TLS", "the gateway", client_cert=False)
    parser.add_argument(
        "--start-servers",
        choices=("auto", "always", "never"),
        default="auto",
        help="start the embedded servers when no gateway answers (auto, the default), always, or never",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the pipeline in this process (synchuman.SyncHumanPipeline) instead of through the gateway",
    )
    parser.add_argument(
        "--ckpts", metavar="DIR", help="checkpoint root for --in-process or for servers this command starts"
    )
    parser.add_argument(
        "--device", default="auto", help="device for --in-process or for servers this command starts"
    )
    parser.add_argument("--seed", type=int, help="random seed of both stages (default 43)")
    parser.add_argument("--steps1", type=int, metavar="N", help="multiview sampler steps (default 50)")
    parser.add_argument("--guidance1", type=float, metavar="W", help="multiview guidance scale (default 3.0)")
    parser.add_argument(
        "--steps2", type=int, metavar="N", help="structured-latent sampler steps (default 25)"
    )
    parser.add_argument(
        "--guidance2", type=float, metavar="W", help="structured-latent guidance (default 5.0)"
    )
    parser.add_argument("--texture-size", type=int, metavar="PX", help="baked texture edge (default 1024)")
    parser.add_argument(
        "--profile",
        default="",
        metavar="NAME",
        help="named output profile of the gateway: standard (default), web, game, ar, preview-only (`GET "
        "/v1/profiles` lists a gateway's); the other flags override single options of it",
    )
    parser.add_argument("--simplify", type=float, metavar="R", help="fraction of faces removed (default 0.7)")
    parser.add_argument(
        "--faces",
        type=int,
        metavar="N",
        help="polygon budget: N faces (5000 to 500000, within 2 %%) instead of --simplify",
    )
    parser.add_argument(
        "--quads",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="quad-dominant remesh (OBJ and USDZ keep the quads; the GLB is triangulated)",
    )
    parser.add_argument(
        "--bake-mode",
        choices=("fast", "optimize"),
        help="texture bake: fast (default; splat + full-batch steps) or optimize (upstream, 1000 steps)",
    )
    parser.add_argument(
        "--bake-steps", type=int, metavar="N", help="texture bake steps (default: fast 100, optimize 1000)"
    )
    parser.add_argument("--visibility-views", type=int, metavar="N", help="hidden-face views (default 1000)")
    parser.add_argument(
        "--format",
        "--extra",
        dest="extra",
        action="append",
        default=[],
        choices=sorted(FORMATS),
        help="also make and download: ply (Gaussians), obj (zipped OBJ), usdz (AR), preview (thumbnail and "
        "turntable MP4 + WebP), rigged (person_rigged.glb, as --rig), views (the 10 generated PNGs); "
        "repeatable",
    )
    parser.add_argument(
        "--rig",
        action="store_true",
        help="also rig the person for animation: person_rigged.glb beside the GLB (humanoid skeleton, skin "
        "weights, a sample idle animation); without a usable pose the job still succeeds, with a RIG_FAILED "
        "warning",
    )
    parser.add_argument("--segmenter", default="", help="segmentation model name (default u2netp)")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def job_options(args: argparse.Namespace):  # noqa: ANN201 - synchuman.v1.common_pb2.JobOptions
    """The wire options for the chosen flags (unset flags stay unset: the servers' defaults apply)."""
    from synchuman.v1 import common_pb2

    options = common_pb2.JobOptions()
    options.preprocess.segmenter = args.segmenter
    for target, pairs in (
        (
            options.multiview,
            (("seed", args.seed), ("steps", args.steps1), ("guidance_scale", args.guidance1)),
        ),
        (
            options.reconstruction,
            (
                ("seed", args.seed),
                ("steps", args.steps2),
                ("guidance_scale", args.guidance2),
                ("texture_size", args.texture_size),
                ("simplify_ratio", args.simplify),
                ("target_faces", args.faces),
                ("quad_remesh", args.quads),
                ("bake_steps", args.bake_steps),
                ("visibility_views", args.visibility_views),
            ),
        ),
    ):
        for name, value in pairs:
            if value is not None:
                setattr(target, name, value)
    options.profile = args.profile
    if args.bake_mode:
        options.reconstruction.bake_mode = {
            "fast": common_pb2.BAKE_MODE_FAST,
            "optimize": common_pb2.BAKE_MODE_OPTIMIZE,
        }[args.bake_mode]
    extras = [*args.extra, *(["rigged"] if args.rig else [])]
    options.reconstruction.outputs.extend(
        common_pb2.OutputFormat.Value(FORMATS[name]) for name in dict.fromkeys(extras)
    )
    return options


def download_names(args: argparse.Namespace) -> list[str]:
    """What to write beside the GLB: every extra file of stage 2 the job made (asked for with ``--format`` or
    by the profile), and ``multiview`` (the generated views) for ``--format views``."""
    from synchuman.stage_catalog import RECONSTRUCTION

    names = [file.name for file in RECONSTRUCTION.outputs if file.name in RECONSTRUCTION.optional_outputs]
    return names + (["multiview"] if "views" in args.extra else [])


def run(args: argparse.Namespace) -> int:
    """Reconstruct one photo; 0 on success, UserError (exit 2) with the reason otherwise."""
    from pathlib import Path

    from synchuman_cli.main import UserError

    photo = Path(args.photo)
    try:
        data = photo.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {photo}: {exc.strerror or exc}") from None
    if args.in_process:
        return _run_in_process(args, data)
    try:
        from synchuman_cli.gateway_client import GatewayUnavailable, reconstruct_photo, start_servers_for
    except ModuleNotFoundError as exc:  # the Docker images install the server packages only
        raise UserError(
            f"reconstructing through a gateway needs the synchuman-client package ({exc}): "
            "pip install ./clients/python, or use --in-process"
        ) from None

    try:
        gateway_tls = client_tls_from_args(args, "tls")  # servers this command starts serve plaintext
    except CommandLineError as exc:
        raise UserError(str(exc)) from None

    servers = start_servers_for(args) if args.start_servers == "always" else None
    try:
        while True:
            try:
                outcome = reconstruct_photo(
                    servers.gateway if servers else args.gateway,
                    data,
                    job_options(args),
                    Path(args.output),
                    extras=download_names(args),
                    timeout_s=args.timeout,
                    progress=not args.quiet,
                    token=args.token,
                    tls=None if servers else gateway_tls,
                )
                break
            except GatewayUnavailable as exc:
                if args.start_servers != "auto" or servers is not None:
                    raise UserError(f"{exc}; start the servers with `synchuman serve`") from None
                print(f"no gateway at {args.gateway}: starting the embedded servers (this takes a while)")
                servers = start_servers_for(args)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    finally:
        if servers is not None:
            servers.stop()
    if outcome.error:
        raise UserError(outcome.error)
    for line in outcome.summary_lines():
        print(line)
    return 0


def _run_in_process(args: argparse.Namespace, photo: bytes) -> int:
    """``--in-process``: the pipeline in this process; problems the user can fix become UserError."""
    from pathlib import Path

    from gateway.errors import JobError
    from gateway.profile_file import ProfileFileError
    from services.common.stage_io import InvalidInput
    from synchuman.checkpoints.loading import CheckpointError
    from synchuman.pipelines.stage2_types import Stage2OutputRejected
    from synchuman.preprocess.errors import PreprocessError
    from synchuman_cli.in_process import reconstruct_in_process
    from synchuman_cli.main import UserError

    try:
        outcome = reconstruct_in_process(
            photo,
            job_options(args),
            Path(args.output),
            extras=download_names(args),
            ckpts=Path(args.ckpts) if args.ckpts else None,
            device=args.device,
            progress=not args.quiet,
        )
    except InvalidInput as exc:
        raise UserError(f"{exc.field}: {exc}") from None
    except JobError as exc:
        raise UserError(exc.message) from None
    except ProfileFileError as exc:
        raise UserError(str(exc)) from None
    except (CheckpointError, PreprocessError, Stage2OutputRejected) as exc:
        raise UserError(str(exc)) from None
    for line in outcome.summary_lines():
        print(line)
    return 0

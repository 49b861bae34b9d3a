"""``synchuman serve [TARGET] [OPTIONS]``: run one service, or (no target) all of them on localhost.

The targets are the services of :data:`services.launcher.TARGETS`; each target's own options are parsed by
its module, so ``synchuman serve stage1 --help`` lists them and importing this command stays cheap. Without a
target every service runs as its own child process under :class:`services.supervisor.Supervisor` (readiness
via health checks, restarts, SIGTERM forwarded and drained), in the order listed (the gateway goes last).
"""

from __future__ import annotations

import argparse

from services.common.endpoints import DEFAULT_HOST
from services.launcher import TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    targets = "\n".join(f"  {name:<12}{description}" for name, (_, description) in TARGETS.items())
    parser = subparsers.add_parser(
        "serve",
        help="run a gRPC service (or all of them)",
        description=f"Run one service in the foreground, or every service as child processes.\n\n"
        f"targets:\n{targets}\n\n`synchuman serve TARGET --help` lists a target's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        nargs="?",
        choices=sorted(TARGETS),
        metavar="TARGET",
        help="service to run (default: all of them)",
    )
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the target")
    embedded = parser.add_argument_group("all-in-one options (no TARGET)")
    embedded.add_argument(
        "--ckpts", metavar="DIR", help="checkpoint root (default: $SYNCHUMAN_CKPTS or ./ckpts)"
    )
    embedded.add_argument("--device", default="auto", help="device of the GPU stages (default: auto)")
    embedded.add_argument("--dtype", default="auto", help="precision of the GPU stages (default: auto)")
    embedded.add_argument("--host", default=DEFAULT_HOST, help="interface every service listens on")
    embedded.add_argument("--data-dir", metavar="DIR", help="the gateway's job and artifact store")
    embedded.add_argument(
        "--compile",
        action="store_true",
        help="stage 1 compiles its diffusion model at start-up (`serve stage1 --compile`)",
    )
    embedded.add_argument(
        "--stage1-cfg-device",
        metavar="DEVICE",
        help="a second GPU for stage 1's CFG-parallel sampling, e.g. cuda:1 (`serve stage1 --cfg-device`)",
    )
    embedded.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve every service over TLS with this certificate (it must name --host and allow both server "
        "and client use: the gateway presents it to the stages); needs --tls-key and --tls-ca",
    )
    embedded.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    embedded.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="CA that signed --tls-cert: the stages accept only clients it signed (mutual TLS), and clients "
        "of the gateway trust it (synchuman reconstruct --tls-ca)",
    )
    parser.set_defaults(func=run)


def stage1_options(args: argparse.Namespace) -> list[str]:
    """The all-in-one flags that become stage-1 service options."""
    options = ["--compile"] if args.compile else []
    if args.stage1_cfg_device:
        options += ["--cfg-device", args.stage1_cfg_device]
    return options


def _target_module(name: str):  # noqa: ANN202 - a module object
    import importlib

    return importlib.import_module(TARGETS[name][0])


def run(args: argparse.Namespace) -> int:
    """Run the chosen target until SIGINT/SIGTERM, or supervise all targets."""
    from synchuman_cli.main import UserError

    if args.target is None:
        if args.options:
            raise UserError(f"options {' '.join(args.options)} need a TARGET ({', '.join(TARGETS)})")
        return _run_all(args)
    from services.common.arguments import run_checked

    module = _target_module(args.target)
    description = TARGETS[args.target][1]
    parser = argparse.ArgumentParser(prog=f"synchuman serve {args.target}", description=description)
    module.add_arguments(parser)
    return run_checked(module, parser, parser.parse_args(args.options))


def _run_all(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from services.launcher import EmbeddedConfig, TlsFiles, child_specs, missing_services
    from services.supervisor import Supervisor
    from synchuman_cli.main import UserError

    missing = missing_services()
    if missing:
        raise UserError(f"cannot start every service: not installed: {', '.join(missing)}")

    tls_files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls_files) and not all(tls_files):
        raise UserError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    tls = TlsFiles(Path(args.tls_ca), Path(args.tls_cert), Path(args.tls_key)) if all(tls_files) else None
    config = EmbeddedConfig(
        tls=tls,
        host=args.host,
        ckpts=Path(args.ckpts) if args.ckpts else None,
        device=args.device,
        dtype=args.dtype,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        log_level=args.log_level,
        stage1_args=stage1_options(args),
    )
    specs = child_specs(config)
    supervisor = Supervisor(specs)
    supervisor.start()

    def ready() -> None:
        lines = [f"  {s.name:<11}{s.address}" for s in specs]
        lines.append(f"  {'http':<11}{config.http_url}  (OpenAPI at {config.http_url}/docs)")
        print("all services ready:\n" + "\n".join(lines), file=sys.stderr, flush=True)

    return supervisor.run_until_stopped(on_ready=ready)

"""``synchuman serve [TARGET] [OPTIONS]``: run one service, or (no target) all of them on localhost.

Each target is a module that exposes ``add_arguments(parser)``, ``run(args) -> int``, ``DEFAULT_PORT`` and
``SERVICE_NAME`` (the gRPC service its health check reports); add a service by adding one line to
:data:`TARGETS`. The target's own options are parsed by that module, so ``synchuman serve stage1 --help``
lists them and importing this command stays cheap. Without a target every service runs as its own child
process under :class:`services.supervisor.Supervisor` (readiness via health checks, restarts, SIGTERM
forwarded and drained), in the order listed (a front end such as the gateway goes last).
"""

from __future__ import annotations

import argparse

#: target name -> (module, one-line description). Order = start order of the all-in-one default.
TARGETS: dict[str, tuple[str, str]] = {
    "preprocess": ("services.preprocess.main", "PreprocessService: decode, segment, frame, check (CPU)"),
    "stage1": ("services.stage1.main", "Stage1Service: multiview diffusion and sparse structure (GPU)"),
    "stage2": ("services.stage2.main", "Stage2Service: structured latent, decoders, GLB export (GPU)"),
}


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
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS), metavar="TARGET",
                        help="service to run (default: all of them)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the target")
    parser.set_defaults(func=run)


def _target_module(name: str):  # noqa: ANN202 - a module object
    import importlib

    return importlib.import_module(TARGETS[name][0])


def run(args: argparse.Namespace) -> int:
    """Run the chosen target until SIGINT/SIGTERM, or supervise all targets."""
    from synchuman.cli import UserError

    if args.target is None:
        if args.options:
            raise UserError(f"options {' '.join(args.options)} need a TARGET ({', '.join(TARGETS)})")
        return _run_all()
    module = _target_module(args.target)
    description = TARGETS[args.target][1]
    parser = argparse.ArgumentParser(prog=f"synchuman serve {args.target}", description=description)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)


def _run_all() -> int:
    import sys

    from services.supervisor import ChildSpec, Supervisor

    specs = []
    for name in TARGETS:
        module = _target_module(name)
        argv = (sys.executable, "-m", "synchuman.cli", "serve", name)
        specs.append(ChildSpec(name, argv, f"127.0.0.1:{module.DEFAULT_PORT}", module.SERVICE_NAME))
    supervisor = Supervisor(specs)
    supervisor.start()
    return supervisor.run_until_stopped(
        on_ready=lambda: print("all services ready: " + ", ".join(f"{s.name} {s.address}" for s in specs),
                               file=sys.stderr, flush=True)
    )

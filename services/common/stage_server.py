"""Process lifecycle of a GPU stage service: listen, load and warm up, serve, drain on SIGTERM.

Health (grpc.health.v1) answers from the first moment: NOT_SERVING while the checkpoints load and the warm-up
run executes, SERVING afterwards, NOT_SERVING again as soon as a shutdown begins. Stage RPCs sent before the
backend is ready fail with UNAVAILABLE and a RetryInfo.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.common import tracing
from services.common.auth import STAGE_TOKEN_HINT
from services.common.backend import StageBackend
from services.common.endpoints import default_address
from services.common.gpu_metrics import register_gpu_memory_metrics
from services.common.grpc_server import ServiceServer
from services.common.observability import start_metrics_server
from services.common.stage_runtime import StageLimits, StageRuntime
from services.common.tls import ServerTls, add_server_tls_arguments, server_tls_from_args
from synchuman.stage_catalog import StageEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """How to build one stage service.

    ``stage``: the stage's catalog entry (its name labels logs and errors; its service names the server in
    metrics, health and reflection); ``make_servicer(runtime)`` and
    ``add_servicer(servicer, server)`` register the RPCs; ``load_backend()`` returns the loaded
    :class:`~services.common.backend.StageBackend` (raising with an actionable message when its checkpoints
    are missing or wrong), which is warmed up before SERVING and closed after the drain.
    """

    stage: StageEntry
    make_servicer: Callable[[StageRuntime], Any]
    add_servicer: Callable[[Any, grpc.Server], None]
    load_backend: Callable[[], StageBackend[Any, Any, Any]]


@dataclass(frozen=True)
class StageAccess:
    """Who may call a stage: ``token``: the bearer token every call but health and reflection must send
    (empty: anyone); ``tls``: TLS, or mutual TLS with client certificates (None: plaintext)."""

    token: str = ""
    tls: ServerTls | None = None


class StageServer:
    """A started stage server (``port`` is the bound port); :meth:`load` then :meth:`wait` / :meth:`stop`."""

    def __init__(
        self, spec: StageSpec, address: str, limits: StageLimits, access: StageAccess = StageAccess()
    ) -> None:
        self.spec = spec
        self.runtime = StageRuntime(spec.stage.name, limits)
        workers = limits.concurrency + limits.max_queue + 8  # running + queued handlers + health/info calls
        self.grpc_server = ServiceServer(
            spec.stage.service,
            spec.stage.grpc_service,
            address,
            lambda server: spec.add_servicer(spec.make_servicer(self.runtime), server),
            workers=workers,
            max_concurrent_rpcs=workers,
            auth_token=access.token,
            tls=access.tls,
            token_hint=STAGE_TOKEN_HINT,
        )
        self.port = self.grpc_server.port
        self.address = self.grpc_server.address
        self.grpc_server.start()
        self._stopped = threading.Event()

    def load(self) -> None:
        """Load and verify the checkpoints, warm up, then report SERVING."""
        started = time.monotonic()
        backend = self.spec.load_backend()
        loaded = time.monotonic()
        backend.warm_up()
        self.runtime.attach(backend)
        self.grpc_server.set_serving(True)
        log.info(
            "serving",
            extra={
                "stage": self.spec.stage.name,
                "address": self.address,
                "load_s": round(loaded - started, 3),
                "warm_up_s": round(time.monotonic() - loaded, 3),
                "info": str(backend.info()),
            },
        )

    def stop(self) -> None:
        """Drain (queued work rejected, running work finished or rejected after the grace period), stop,
        then close the backend (its accelerator memory is freed).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        running = self.runtime.limiter.running
        log.info("shutting down", extra={"stage": self.spec.stage.name, "running": running})
        self.grpc_server.health.enter_graceful_shutdown()
        self.runtime.drain()
        self.grpc_server.stop(2.0).wait()
        self.runtime.close_backend()
        log.info("stopped", extra={"stage": self.spec.stage.name})


def add_server_arguments(
    parser: argparse.ArgumentParser, name: str, concurrency: int = 1, max_queue: int = 4
) -> None:
    """The command-line options of every service process: address (default: service ``name``'s default
    address), admission limits, grace, metrics, access, tracing (``--otlp-endpoint``).
    """
    parser.add_argument("--address", default=default_address(name), help="host:port to listen on")
    parser.add_argument(
        "--concurrency", type=int, default=concurrency,
        help=f"requests worked on at once (default {concurrency})",
    )
    parser.add_argument(
        "--max-queue", type=int, default=max_queue, help=f"requests that may wait (default {max_queue})"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running work may take to finish before it is stopped (default 30)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, metavar="PORT",
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (default 0: off)",
    )
    parser.add_argument(
        "--auth-token", default=os.environ.get("SYNCHUMAN_STAGE_TOKEN", ""), metavar="TOKEN",
        help="bearer token every call except health and reflection must send: the gateway's --stage-token "
        "(default: $SYNCHUMAN_STAGE_TOKEN, preferred: a flag shows in process listings; empty: none)",
    )
    add_server_tls_arguments(parser, "SYNCHUMAN_STAGE", client_ca=True)
    tracing.add_tracing_arguments(parser)


def add_stage_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The command-line options every GPU stage service shares (:func:`add_server_arguments` + device)."""
    add_server_arguments(parser, name)
    parser.add_argument(
        "--ckpts", metavar="DIR", help="checkpoint root (default: $SYNCHUMAN_CKPTS or ./ckpts)"
    )
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (cuda if present), cpu, cuda:0, ..."
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="compute precision (auto: float16 on CUDA, float32 on CPU)",
    )


def limits_from_args(args: argparse.Namespace, typical_job_s: float) -> StageLimits:
    """:class:`StageLimits` from :func:`add_stage_arguments` options."""
    return StageLimits(
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        grace_s=args.grace,
        typical_job_s=typical_job_s,
    )


def access_from_args(args: argparse.Namespace) -> StageAccess:
    """:class:`StageAccess` from :func:`add_server_arguments` options."""
    return StageAccess(args.auth_token, server_tls_from_args(args))


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """``auto`` resolved: the CUDA device when one is present (else CPU); float16 on CUDA, float32 on CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "float16"
    return device, dtype


def serve_forever(
    spec: StageSpec,
    address: str,
    limits: StageLimits,
    metrics_port: int = 0,
    access: StageAccess = StageAccess(),
    otlp_endpoint: str = "",
) -> int:
    """Run a stage service until SIGINT/SIGTERM; return the process exit status (3: checkpoints unusable).

    ``metrics_port``: serve Prometheus metrics there (0: off); ``access``: token and TLS; ``otlp_endpoint``:
    where traces go (``--otlp-endpoint``; "" : the standard ``OTEL_EXPORTER_OTLP_*`` variables, or off).
    """
    tracing.configure(spec.stage.service, otlp_endpoint)  # before the server: its interceptors depend on it
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = StageServer(spec, address, limits, access)
    register_gpu_memory_metrics()
    start_metrics_server(metrics_port)
    service = spec.stage.service
    print(f"{service}: listening on {server.address} (loading checkpoints)", file=sys.stderr, flush=True)
    failure: list[BaseException] = []

    def load() -> None:
        try:
            server.load()
            print(f"{service}: serving on {server.address}", file=sys.stderr, flush=True)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
            stop.set()

    threading.Thread(target=load, name=f"{service}-load", daemon=True).start()
    while not stop.wait(0.5):
        pass
    if failure:
        log.error("start-up failed", extra={"stage": spec.stage.name}, exc_info=failure[0])
        print(f"{service}: cannot start: {failure[0]}", file=sys.stderr, flush=True)
        server.grpc_server.stop(None)
        return 3
    server.stop()
    # Work stopped, backend closed: what is left is the interpreter's teardown, whose garbage collections
    # walk every object of torch and the model libraries (seconds of CPU on a busy host, past the grace
    # period a supervisor allows). Out of the collector, the process exits at once.
    gc.freeze()
    return 0

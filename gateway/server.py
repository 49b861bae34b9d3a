"""The gateway process: gRPC ReconstructionService (with health, reflection, logs and metrics) and the HTTP
bridge in one process, both on one :class:`~gateway.manager.JobManager`.

``Gateway(config)`` starts everything and resumes unfinished jobs; :func:`serve` runs it until SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from gateway.artifacts import open_artifact_store
from gateway.grpc_servicer import ReconstructionServicer
from gateway.job_loop import LeaseSettings
from gateway.manager import JobManager, ManagerSettings
from gateway.profile_file import load_profiles
from gateway.retry import RetryPolicy
from gateway.stages import StageClients, StageTargets
from gateway.store import open_job_store
from gateway.webhooks import WebhookSettings
from services.common.endpoints import RECONSTRUCTION_SERVICE, default_address
from services.common.grpc_server import ServiceServer
from services.common.tls import ClientTls, ServerTls
from synchuman.v1 import reconstruction_pb2_grpc

log = logging.getLogger(__name__)


@dataclass
class GatewayConfig:
    """Everything the gateway needs. ``http_address`` empty: no HTTP bridge. ``database_url`` (the job store)
    empty: ``DATA_DIR/jobs.sqlite3``; ``artifact_store`` empty: ``DATA_DIR/artifacts``. ``auth_token``: bearer
    token required on gRPC (health and reflection excepted) and by the HTTP bridge, the admin of every job;
    API keys in the job store are tenants (:mod:`gateway.tenants`; empty and no keys: open).
    ``gateway_id``: this gateway's name on its job leases (empty: ``HOSTNAME:GRPC_PORT``; unique among the
    gateways of one store, the same across restarts); ``lease_s``: job lease length in seconds; ``poll_s``:
    how often an idle worker looks for jobs unwoken (see :class:`~gateway.job_loop.LeaseSettings`). ``tls``:
    serve gRPC and the HTTP bridge over TLS (None: plaintext); ``stage_token`` / ``stage_tls``: the bearer
    token and TLS (with the gateway's client certificate for mTLS) of the calls to the stage services.
    ``profiles``: the named output profiles' TOML file (empty: ``$SYNCHUMAN_GATEWAY_PROFILES``, else the
    shipped ``gateway/profiles.toml``; see :mod:`gateway.profile_file`). ``webhooks``: the jobs' callback URLs
    (secret, allowed hosts, retry schedule; default off: see :mod:`gateway.webhooks`).
    """

    address: str = default_address("gateway")
    http_address: str = default_address("http")
    preprocess_target: str = default_address("preprocess")
    stage1_target: str = default_address("stage1")
    stage2_target: str = default_address("stage2")
    data_dir: Path = Path("gateway-data")
    database_url: str = ""
    artifact_store: str = ""
    auth_token: str = ""
    max_upload_bytes: int = 32 << 20
    max_pending_jobs: int = 64
    workers: int = 8
    stage_timeout_s: float = 1800.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retention_s: float = 7 * 24 * 3600.0
    gateway_id: str = ""
    lease_s: float = 30.0
    poll_s: float = 1.0
    tls: ServerTls | None = None
    stage_token: str = ""
    stage_tls: ClientTls | None = None
    profiles: str = ""
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)


class Gateway:
    """A started gateway: ``port`` / ``http_port`` are the bound ports; :meth:`stop` shuts it down."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        data_dir = Path(config.data_dir)
        self.manager = JobManager(
            open_job_store(config.database_url, data_dir),
            open_artifact_store(config.artifact_store, data_dir),
            StageClients(
                StageTargets(config.preprocess_target, config.stage1_target, config.stage2_target),
                config.stage_timeout_s,
                config.stage_token,
                config.stage_tls,
            ),
            ManagerSettings(
                config.max_pending_jobs,
                config.workers,
                config.max_upload_bytes,
                config.retry,
                config.retention_s,
                LeaseSettings(lease_s=config.lease_s, poll_s=config.poll_s),
                load_profiles(config.profiles or None),
                webhooks=config.webhooks,
            ),
        )
        self.grpc_server = ServiceServer(
            "gateway",
            RECONSTRUCTION_SERVICE,
            config.address,
            lambda server: reconstruction_pb2_grpc.add_ReconstructionServiceServicer_to_server(
                ReconstructionServicer(self.manager, config.auth_token), server
            ),  # the servicer authenticates its calls itself (gateway.tenants: the token or an API key)
            workers=64,
            max_concurrent_rpcs=256,
            tls=config.tls,
        )
        self.port = self.grpc_server.port
        self.address = self.grpc_server.address
        self.gateway_id = config.gateway_id or f"{socket.gethostname()}:{self.port}"
        resumed = self.manager.start(self.gateway_id)
        self.grpc_server.start()
        self.http = None
        self.http_port = 0
        if config.http_address:
            from gateway.http import HttpBridge

            self.http = HttpBridge(
                self.manager, config.http_address, config.auth_token, config.max_upload_bytes, config.tls
            )
            self.http_port = self.http.start()
        self.manager.readiness.start(self.grpc_server.set_serving)
        log.info(
            "serving",
            extra={
                "address": self.address,
                "http_port": self.http_port,
                "gateway_id": self.gateway_id,
                "unfinished_jobs": resumed,
                "data_dir": str(data_dir),
            },
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, stop accepting calls, stop the workers (running jobs resume at the next
        start) and the HTTP bridge.
        """
        self.manager.readiness.stop()
        self.grpc_server.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.stop()
        stopped = self.grpc_server.stop(grace_s)
        self.manager.stop()
        stopped.wait()


def serve(config: GatewayConfig) -> int:
    """Run the gateway until SIGINT/SIGTERM; exit status 0."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    gateway = Gateway(config)
    http = f", HTTP on port {gateway.http_port}" if gateway.http else ""
    print(f"gateway: serving gRPC on {gateway.address}{http}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    gateway.stop()
    return 0

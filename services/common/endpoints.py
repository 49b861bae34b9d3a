"""Where every service listens by default and which gRPC service name its health check reports.

The stage services' entries come from :mod:`synchuman.stage_catalog`; the gateway's are defined here. The
service mains, the gateway, the launcher and the clients read them. Names are the service names of the
all-in-one deployment: ``preprocess``, ``stage1``, ``stage2``, ``gateway`` (gRPC) and ``http`` (the
gateway's HTTP bridge).
"""

from __future__ import annotations

from synchuman.stage_catalog import STAGES

#: Interface a service binds to unless told otherwise (loopback: nothing is exposed by default).
DEFAULT_HOST = "127.0.0.1"

#: Full proto name of the gateway's gRPC service (the name its health check and server reflection report).
RECONSTRUCTION_SERVICE = "synchuman.v1.ReconstructionService"

#: Default TCP port per service name.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50051,
    **{entry.service: entry.default_port for entry in STAGES},
    "http": 8080,
}

#: Service name -> the gRPC service its health check reports.
HEALTH_SERVICES: dict[str, str] = {
    **{entry.service: entry.grpc_service for entry in STAGES},
    "gateway": RECONSTRUCTION_SERVICE,
}

#: Stage service name -> the ``synchuman.v1.Stage`` value of the job step it runs, in job order.
STAGE_SERVICES: dict[str, int] = {entry.service: entry.stage for entry in STAGES}


def default_address(name: str, host: str = DEFAULT_HOST) -> str:
    """``host:port`` where service ``name`` (a key of :data:`DEFAULT_PORTS`) listens by default."""
    return f"{host}:{DEFAULT_PORTS[name]}"

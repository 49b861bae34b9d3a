"""Where every service listens by default and which gRPC service name its health check reports.

Defined once here; the service mains, the gateway, the launcher and the clients read them.
Names are the service names of the all-in-one deployment: ``preprocess``, ``stage1``, ``stage2``,
``gateway`` (gRPC) and ``http`` (the gateway's HTTP bridge).
"""

from __future__ import annotations

from synchuman.v1 import common_pb2

#: Interface a service binds to unless told otherwise (loopback: nothing is exposed by default).
DEFAULT_HOST = "127.0.0.1"

#: Default TCP port per service name.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50051,
    "preprocess": 50052,
    "stage1": 50053,
    "stage2": 50054,
    "http": 8080,
}

#: Full proto name of each gRPC service (the name its health check and server reflection report).
PREPROCESS_SERVICE = "synchuman.v1.PreprocessService"
STAGE1_SERVICE = "synchuman.v1.Stage1Service"
STAGE2_SERVICE = "synchuman.v1.Stage2Service"
RECONSTRUCTION_SERVICE = "synchuman.v1.ReconstructionService"

#: Service name -> the gRPC service its health check reports.
HEALTH_SERVICES: dict[str, str] = {
    "preprocess": PREPROCESS_SERVICE,
    "stage1": STAGE1_SERVICE,
    "stage2": STAGE2_SERVICE,
    "gateway": RECONSTRUCTION_SERVICE,
}

#: Stage service name -> the ``synchuman.v1.Stage`` value of the job step it runs, in job order.
STAGE_SERVICES: dict[str, int] = {
    "preprocess": common_pb2.STAGE_PREPROCESS,
    "stage1": common_pb2.STAGE_MULTIVIEW,
    "stage2": common_pb2.STAGE_RECONSTRUCTION,
}


def default_address(name: str, host: str = DEFAULT_HOST) -> str:
    """``host:port`` where service ``name`` (a key of :data:`DEFAULT_PORTS`) listens by default."""
    return f"{host}:{DEFAULT_PORTS[name]}"

"""A stand-in service process for supervisor tests: gRPC health SERVING on the given address until SIGTERM.

Usage: ``python tests/fake_service.py ADDRESS [--exit-at-once CODE]``; on SIGTERM it writes ``stopped`` to
stdout and exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> int:
    address = sys.argv[1]
    if "--exit-at-once" in sys.argv:
        return int(sys.argv[sys.argv.index("--exit-at-once") + 1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("fake.Service", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(address)
    server.start()
    stop.wait()
    server.stop(None)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Container health probe: ``python -m services.common.healthcheck HOST:PORT [--service NAME]``.

Asks the gRPC ``grpc.health.v1.Health/Check`` of a service and exits 0 when it answers SERVING, 1 otherwise
(NOT_SERVING while models load or during a drain, unknown service, unreachable), printing one line. Used by
the compose health checks; the images need nothing besides the project itself.
"""

from __future__ import annotations

import argparse
import sys

SERVING = 1  # grpc.health.v1.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    args = parser.parse_args(argv)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    what = f"{args.address} {args.service or '(server)'}"
    with grpc.insecure_channel(args.address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            ).status
        except grpc.RpcError as exc:
            print(f"unhealthy: {what}: {exc.code().name} ({exc.details()})", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{'healthy' if status == SERVING else 'unhealthy'}: {what}: {name}")
    return 0 if status == SERVING else 1


if __name__ == "__main__":
    sys.exit(main())

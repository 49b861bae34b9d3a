"""Container health probe: ``python -m services.common.healthcheck HOST:PORT [--service NAME]``.

Asks the gRPC ``grpc.health.v1.Health/Check`` of a service and exits 0 when it answers SERVING, 1 otherwise
(NOT_SERVING while models load or during a drain, unknown service, unreachable), printing one line. Used by
the compose health checks and, where the services require TLS client certificates (mTLS), by Kubernetes exec
probes; the images need nothing besides the project itself. A service serving TLS is asked over TLS with
``--tls-ca`` (and ``--tls-cert`` / ``--tls-key`` for mTLS, ``--tls-server-name`` when the certificate does not
name 127.0.0.1), or the ``SYNCHUMAN_HEALTHCHECK_TLS_*`` variables.
"""

from __future__ import annotations

import argparse
import sys

from services.common.arguments import CommandLineError
from services.common.tls import add_client_tls_arguments, client_tls_from_args, open_channel

SERVING = 1  # grpc.health.v1.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    add_client_tls_arguments(parser, "tls", "SYNCHUMAN_HEALTHCHECK_TLS", "the service")
    args = parser.parse_args(argv)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        tls = client_tls_from_args(args, "tls")
    except CommandLineError as exc:
        parser.error(str(exc))
    what = f"{args.address} {args.service or '(server)'}"
    with open_channel(args.address, tls) as channel:
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

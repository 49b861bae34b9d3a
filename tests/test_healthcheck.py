"""``python -m services.common.healthcheck``: exit 0 only when the asked service answers SERVING."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import healthcheck


@pytest.fixture
def server() -> tuple[str, health.HealthServicer]:
    servicer = health.HealthServicer()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(None)


def test_serving_not_serving_unknown_and_unreachable(server, capsys: pytest.CaptureFixture[str]) -> None:
    address, servicer = server
    servicer.set("synchuman.v1.Stage1Service", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([address, "--service", "synchuman.v1.Stage1Service"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out
    servicer.set("synchuman.v1.Stage1Service", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address, "--service", "synchuman.v1.Stage1Service"]) == 0
    assert "healthy" in capsys.readouterr().out
    assert healthcheck.main([address, "--service", "no.Such", "--timeout", "1"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert healthcheck.main(["127.0.0.1:1", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err

"""The gateway's readiness: ``/healthz``, ``/readyz`` and its gRPC health say SERVING only when every stage
service answers SERVING and the job store answers; ``/livez`` only says the process answers (issue 17 #10)."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import httpx
import pytest
from gateway_doubles import Behaviour, start_doubles
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.readiness import REACHABLE, UNREACHABLE, ReadinessMonitor, StageReadiness
from gateway.replicas import target_addresses
from gateway.server import Gateway, GatewayConfig
from gateway.stages import StageClients, StageTargets
from gateway.store import StoreUnavailable
from gateway.store_sqlite import SqliteJobStore
from services.common.endpoints import RECONSTRUCTION_SERVICE
from services.launcher import free_port
from services.supervisor import health_status

SERVING, NOT_SERVING = 1, 2


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def stages_and_late_stage2():
    """Preprocess and stage-1 doubles serving; stage 2's port reserved but nothing listening yet."""
    servers, targets = [], {}
    for name in ("preprocess", "stage1"):
        server, port, _ = start_doubles("127.0.0.1:0", [name], Behaviour())
        servers.append(server)
        targets[name] = f"127.0.0.1:{port}"
    targets["stage2"] = f"127.0.0.1:{free_port()}"
    yield servers, targets
    for server in servers:
        server.stop(grace=None)


def test_gateway_is_not_ready_until_every_stage_serves(stages_and_late_stage2, tmp_path) -> None:
    servers, targets = stages_and_late_stage2
    gateway = Gateway(
        GatewayConfig(
            address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            preprocess_target=targets["preprocess"],
            stage1_target=targets["stage1"],
            stage2_target=targets["stage2"],
            data_dir=tmp_path / "data",
        )
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=10) as http:
            assert health_status(gateway.address, RECONSTRUCTION_SERVICE) == NOT_SERVING
            assert health_status(gateway.address) == NOT_SERVING
            for path in ("/healthz", "/readyz"):
                answer = http.get(path)
                assert answer.status_code == 503, path
                body = answer.json()
                assert body["status"] == "NOT_READY" and body["stages"]["stage2"] == "NOT_SERVING"
                assert body["stages"]["stage1"] == "SERVING" and body["job_store"] == REACHABLE
            assert http.get("/livez").status_code == 200
            server, _, _ = start_doubles(targets["stage2"], ["stage2"], Behaviour())
            servers.append(server)
            wait_for(lambda: health_status(gateway.address, RECONSTRUCTION_SERVICE) == SERVING, 15, "SERVING")
            assert http.get("/healthz").status_code == 200 and http.get("/readyz").json()["status"] == "READY"
            server.stop(grace=None)
            gone = lambda: health_status(gateway.address, RECONSTRUCTION_SERVICE) == NOT_SERVING  # noqa: E731
            wait_for(gone, 15, "NOT_SERVING")
            assert http.get("/healthz").json()["stages"]["stage2"] == "NOT_SERVING"
    finally:
        gateway.stop(grace_s=0.5)


class _FlakyStore(SqliteJobStore):
    """A SQLite job store whose ping fails while ``down`` is set (test double)."""

    down = False

    def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("the job store is down (test)")
        super().ping()


def test_readiness_follows_the_job_store(stages_and_late_stage2, tmp_path) -> None:
    servers, targets = stages_and_late_stage2
    server, port, _ = start_doubles(targets["stage2"], ["stage2"], Behaviour())
    servers.append(server)
    clients = StageClients(StageTargets(targets["preprocess"], targets["stage1"], targets["stage2"]))
    store = _FlakyStore(tmp_path / "jobs.sqlite3")
    monitor = ReadinessMonitor(StageReadiness(clients), store, interval_s=0.1, max_age_s=0.0)
    changes: list[bool] = []
    try:
        monitor.start(changes.append)
        assert changes == [True] and monitor.report().ready
        store.down = True
        wait_for(lambda: changes[-1] is False, 5, "NOT_SERVING")
        report = monitor.report()
        assert report.job_store == UNREACHABLE and "down (test)" in report.as_json()["job_store_error"]
        assert report.as_json()["status"] == "NOT_READY"
        store.down = False
        wait_for(lambda: changes[-1] is True, 5, "SERVING again")
        assert changes == [True, False, True]
    finally:
        monitor.stop()
        clients.close()
        store.close()


def _health_server() -> tuple[grpc.Server, int, health.HealthServicer]:
    """A gRPC server with only grpc.health.v1 (SERVING), on a free port: one replica of a stage."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, servicer


def test_target_addresses_lists_literals_and_resolves_names() -> None:
    listed = target_addresses("ipv4:127.0.0.1:5001,127.0.0.1:5002")
    assert listed == (["127.0.0.1:5001", "127.0.0.1:5002"], "")
    addresses, host = target_addresses("dns:///localhost:5003")
    assert "127.0.0.1:5003" in addresses and host == "localhost"
    assert target_addresses("127.0.0.1:5004") == (["127.0.0.1:5004"], "")
    assert target_addresses("unix:/tmp/stage.sock") == ([], "")
    assert target_addresses("dns:///no-such-host.invalid:5005") == ([], "")


def test_a_stage_is_ready_while_one_of_its_replicas_serves(stages_and_late_stage2, tmp_path) -> None:
    """Two stage-1 replicas behind one target, one warming up (NOT_SERVING): every check says SERVING (not
    whichever replica the round robin reached) and names the other; none serving: NOT_SERVING, both named."""
    servers, targets = stages_and_late_stage2
    stage2, _, _ = start_doubles(targets["stage2"], ["stage2"], Behaviour())
    servers.append(stage2)
    replicas = [_health_server() for _ in range(2)]
    servers.extend(server for server, _, _ in replicas)
    ready_one, warming = (f"127.0.0.1:{port}" for _, port, _ in replicas)
    replicas[1][2].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    target = f"ipv4:{ready_one},{warming}"
    clients = StageClients(StageTargets(targets["preprocess"], target, targets["stage2"]))
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    monitor = ReadinessMonitor(StageReadiness(clients, max_age_s=0.0), store, max_age_s=0.0)
    try:
        for _ in range(6):
            body = monitor.report().as_json()
            assert body["status"] == "READY" and body["stages"]["stage1"] == "SERVING", body
            assert body["replicas_not_serving"] == {"stage1": [warming]}, body
        replicas[0][2].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        body = monitor.report().as_json()
        assert body["status"] == "NOT_READY" and body["stages"]["stage1"] == "NOT_SERVING", body
        assert body["replicas_not_serving"] == {"stage1": [ready_one, warming]}, body
        replicas[1][0].stop(grace=None)  # a replica that is gone is named as well
        replicas[0][2].set("", health_pb2.HealthCheckResponse.SERVING)
        body = monitor.report().as_json()
        assert body["status"] == "READY" and body["replicas_not_serving"] == {"stage1": [warming]}, body
        one_each = StageClients(StageTargets(targets["preprocess"], ready_one, targets["stage2"]))
        try:  # one address per stage: asked through the stage channel, nothing to name
            states = StageReadiness(one_each, max_age_s=0.0).check()
            assert states == ({"preprocess": "SERVING", "stage1": "SERVING", "stage2": "SERVING"}, {})
        finally:
            one_each.close()
    finally:
        clients.close()
        store.close()

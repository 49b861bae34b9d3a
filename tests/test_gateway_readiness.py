"""The gateway's readiness: ``/healthz``, ``/readyz`` and its gRPC health say SERVING only when every stage
service answers SERVING and the job store answers; ``/livez`` only says the process answers (issue 17 #10)."""

from __future__ import annotations

import time

import httpx
import pytest
from gateway_doubles import Behaviour, start_doubles

from gateway.readiness import REACHABLE, UNREACHABLE, ReadinessMonitor, StageReadiness
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

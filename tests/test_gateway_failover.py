"""Several gateways on one PostgreSQL job store and one S3 artifact store.

Real servers, started here: PostgreSQL (Debian's package) and moto's S3 emulator as its own process (it
speaks the S3 REST API; tests/real_servers.py). The gateways are real ``python -m gateway`` processes; the
stage services are the gRPC doubles of tests/gateway_doubles.py (real servers of the three stage APIs with
canned outputs and a call log across processes): the subject is the gateways' sharing of jobs, which does
not depend on what the models compute, and the doubles keep the test to seconds on 2 CPU cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import grpc
import pytest
from conftest import REPO_ROOT
from gateway_doubles import Behaviour, start_doubles
from real_servers import PostgresServer, create_database, free_port, postgres_server, s3_server
from test_gateway import calls, photo, stub_for, upload, wait_until

from gateway.server import Gateway, GatewayConfig
from services.supervisor import health_status
from synchuman.v1 import reconstruction_pb2

SERVICE = "synchuman.v1.ReconstructionService"
BUCKET = "synchuman-failover"
LEASE_S = 3.0
STAGE_NAMES = {1: "preprocess", 2: "multiview", 3: "reconstruction"}


@pytest.fixture
def shared_stores(tmp_path):
    """(job store URL, artifact store URL, environment with the S3 endpoint and credentials)."""
    with postgres_server() as database, s3_server() as endpoint:
        env = dict(
            os.environ,
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_REGION="us-east-1",
        )
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket=BUCKET)
        yield database, f"s3://{BUCKET}/jobs", env


def start_gateway(name: str, port: int, targets: dict[str, str], stores, data: Path) -> subprocess.Popen:
    """``python -m gateway`` as ``name`` on ``port``; ``stores``: (job store URL, artifact store URL,
    environment). Returns once it is SERVING."""
    database, artifacts, env = stores
    argv = [
        sys.executable, "-m", "gateway", "--log-level", "WARNING",
        "--address", f"127.0.0.1:{port}", "--http", "off", "--data-dir", str(data),
        "--job-store", database, "--artifact-store", artifacts,
        "--gateway-id", name, "--lease-seconds", str(LEASE_S), "--workers", "6", "--max-attempts", "60",
        "--preprocess", targets["preprocess"], "--stage1", targets["stage1"], "--stage2", targets["stage2"],
    ]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env)
    wait_until(lambda: health_status(f"127.0.0.1:{port}", SERVICE) == 1, 60, f"gateway {name}")
    return process


class GatewayPair:
    """Gateway processes ``gw-a`` (:attr:`a`) and ``gw-b`` (:attr:`b`) on the same stores (see
    :func:`start_gateway`), both calling the stage services at ``targets``; :meth:`close` kills both."""

    def __init__(self, targets: dict[str, str], stores, tmp: Path) -> None:
        self.targets, self.stores, self.tmp = targets, stores, tmp
        self.ports = {"gw-a": free_port(), "gw-b": free_port()}
        self.a, self.b = (f"127.0.0.1:{port}" for port in self.ports.values())
        self.processes: dict[str, subprocess.Popen] = {}
        try:
            for name in self.ports:
                self.start(name)
        except BaseException:
            self.close()
            raise

    def start(self, name: str) -> None:
        """(Re)start gateway ``name`` under its id, port and data folder."""
        port, data = self.ports[name], self.tmp / name
        self.processes[name] = start_gateway(name, port, self.targets, self.stores, data)

    def kill(self, name: str) -> None:
        """SIGKILL gateway ``name`` (no drain, no lease release) and reap it."""
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait()

    def close(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()


class Watcher(threading.Thread):
    """Watches a job on gateway A; when A dies mid-stream, reconnects to gateway B after the last event it
    got (``after_sequence``), as a client library would. Keeps every event and where it came from."""

    def __init__(self, job_id: str, first: str, second: str, timeout_s: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.job_id, self.first, self.second, self.timeout_s = job_id, first, second, timeout_s
        self.events: list[tuple[str, reconstruction_pb2.WatchJobResponse]] = []

    def run(self) -> None:
        for address in (self.first, self.second):
            after = self.events[-1][1].sequence if self.events else 0
            request = reconstruction_pb2.WatchJobRequest(job_id=self.job_id, after_sequence=after)
            try:
                for event in stub_for(address).WatchJob(request, timeout=self.timeout_s):
                    self.events.append((address, event))
                return
            except grpc.RpcError:
                continue

    @property
    def job_events(self) -> list[reconstruction_pb2.WatchJobResponse]:
        """The events received so far, from either gateway."""
        return [event for _, event in list(self.events)]


def started_on(events: list[reconstruction_pb2.WatchJobResponse]) -> list[str]:
    """'stage@gateway' for every stage attempt, from the start events' messages."""
    return [
        f"{STAGE_NAMES[e.progress.stage]}@{e.progress.message.rsplit(' ', 1)[-1]}"
        for e in events
        if e.WhichOneof("event") == "progress" and e.progress.phase == "start"
    ]


def check_finished_by_b(pair: GatewayPair, watchers: list[Watcher]) -> None:
    """Every watched job succeeded; its watch went from A to B without gap or duplicate; its last stage
    attempt ran on B."""
    for watcher in watchers:
        watcher.join(watcher.timeout_s)
    for watcher in watchers:
        events, job_id = watcher.job_events, watcher.job_id
        sources = {address for address, _ in watcher.events}
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), job_id
        assert sources == {pair.a, pair.b}, f"{job_id}: watched on {sources}"
        final = events[-1].finished
        assert final.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, (job_id, final.error.message)
        attempts = started_on(events)
        assert attempts[-1].endswith("@gw-b") and all(x.endswith(("@gw-a", "@gw-b")) for x in attempts)


def check_listed_alike(pair: GatewayPair, job_ids: list[str]) -> None:
    """With A restarted under its id, ListJobs on A and on B shows the same jobs, all succeeded."""
    pair.start("gw-a")
    listed = [
        [(j.id, j.state) for j in stub_for(g).ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10).jobs]
        for g in (pair.a, pair.b)
    ]
    assert listed[0] == listed[1]
    assert sorted(i for i, _ in listed[0]) == sorted(job_ids)
    assert {state for _, state in listed[0]} == {reconstruction_pb2.JOB_STATE_SUCCEEDED}


def test_killed_gateway_jobs_are_finished_by_the_other_without_rerunning_finished_stages(
    shared_stores, tmp_path
):
    began = time.monotonic()
    log = tmp_path / "calls.log"
    servers, targets = [], {}
    for name, behaviour in (
        ("preprocess", Behaviour(step_s=0.05)),
        ("stage1", Behaviour(step_s=0.3, steps=10)),
        ("stage2", Behaviour(step_s=0.3, steps=20)),  # long enough that batch 1 is still in it at the kill
    ):
        behaviour.log = log
        server, port, _ = start_doubles("127.0.0.1:0", [name], behaviour)
        servers.append(server)
        targets[name] = f"127.0.0.1:{port}"
    pair = None
    try:
        pair = GatewayPair(targets, shared_stores, tmp_path)
        stub_a = stub_for(pair.a)
        first = [stub_a.SubmitJob(upload(photo(), key=f"order-{i}"), timeout=30).job.id for i in range(3)]
        wait_until(lambda: all(calls(log, "stage2", j, "started") for j in first), 30, "batch 1 in stage 2")
        second = [stub_a.SubmitJob(upload(photo(), key=f"order-{i}"), timeout=30).job.id for i in range(3, 6)]
        wait_until(lambda: all(calls(log, "stage1", j, "started") for j in second), 30, "batch 2 in stage 1")
        watchers = [Watcher(job_id, pair.a, pair.b) for job_id in first + second]
        for watcher in watchers:
            watcher.start()
        time.sleep(0.5)
        in_flight = {
            j: [s for s in ("stage1", "stage2") if calls(log, s, j, "started") > calls(log, s, j, "ok")]
            for j in first + second
        }
        pair.kill("gw-a")
        killed_at = time.monotonic()

        # A client retrying a submission on the surviving gateway gets the same job (idempotency key).
        again = stub_for(pair.b).SubmitJob(upload(photo(), key="order-4"), timeout=30)
        assert again.deduplicated and again.job.id == second[1]

        check_finished_by_b(pair, watchers)
        finished_s = time.monotonic() - killed_at
        report = []
        for watcher in watchers:
            job_id = watcher.job_id
            runs = {s: calls(log, s, job_id, "started") for s in ("preprocess", "stage1", "stage2")}
            assert runs["preprocess"] == 1, (job_id, runs)
            for stage in ("stage1", "stage2"):
                needed_again = stage in in_flight[job_id]
                assert runs[stage] == 1 + needed_again, (job_id, runs, in_flight[job_id])
            attempts = started_on(watcher.job_events)
            report.append(f"{job_id} in flight at kill: {in_flight[job_id] or '-'}; runs {runs}; {attempts}")
        check_listed_alike(pair, first + second)
        assert {s for v in in_flight.values() for s in v} == {"stage1", "stage2"}
        report.append(f"every job finished {finished_s:.1f} s after the SIGKILL (lease {LEASE_S} s)")
        print("\n".join(["", *report, f"wall time {time.monotonic() - began:.1f} s"]))
    finally:
        if pair is not None:
            pair.close()
        for server in servers:
            server.stop(grace=None)


def test_readiness_follows_the_job_store(tmp_path):
    """NOT_SERVING while PostgreSQL is down, SERVING again once it is back (the stages serving throughout)."""
    server = PostgresServer()
    stages, stage_port, _ = start_doubles("127.0.0.1:0", ["preprocess", "stage1", "stage2"], Behaviour())
    target = f"127.0.0.1:{stage_port}"
    try:
        server.start()
        create_database(server.url("postgres"), "jobs")
        gateway = Gateway(
            GatewayConfig(
                address="127.0.0.1:0", http_address="", data_dir=tmp_path / "data",
                database_url=server.url("jobs"), preprocess_target=target, stage1_target=target,
                stage2_target=target,
            )
        )  # fmt: skip
        try:
            assert health_status(gateway.address, SERVICE) == 1
            server.stop()
            started = time.monotonic()
            wait_until(lambda: health_status(gateway.address, SERVICE) == 2, 30, "NOT_SERVING")
            down_s = time.monotonic() - started
            with pytest.raises(grpc.RpcError) as err:
                stub_for(gateway.address).ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "job database" in err.value.details()
            from prometheus_client import generate_latest

            assert b"synchuman_gateway_jobs{" in generate_latest()  # metrics still answer (job counts NaN)
            server.start()
            wait_until(lambda: health_status(gateway.address, SERVICE) == 1, 30, "SERVING again")
            listed = stub_for(gateway.address).ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=30)
            assert listed.jobs == []
            print(f"\nNOT_SERVING {down_s:.1f} s after PostgreSQL stopped")
        finally:
            gateway.stop(grace_s=0.5)
    finally:
        server.remove()
        stages.stop(grace=None)


def test_cancel_and_watch_on_one_gateway_of_a_job_another_runs(tmp_path):
    """Two in-process gateways on one PostgreSQL: a job run by A is watched live and cancelled through B."""
    from test_gateway import Stack

    with postgres_server() as database:
        behaviours = {"stage1": Behaviour(step_s=0.2, steps=200)}
        first = Stack(tmp_path / "a", behaviours=behaviours, database_url=database, lease_s=LEASE_S)
        second = None
        try:
            job = first.stub.SubmitJob(upload(photo()), timeout=30).job
            wait_until(lambda: calls(first.log, "stage1", job.id, "started") == 1, 30, "stage 1 on A")
            second = Stack(tmp_path / "b", database_url=database, lease_s=LEASE_S)
            assert first.gateway.manager.store.lease_owner(job.id) == first.gateway.gateway_id
            watched = []
            for event in second.stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=job.id), timeout=30):
                watched.append(event)
                if event.WhichOneof("event") == "progress" and event.progress.step >= 2:
                    break
            assert [e.sequence for e in watched] == list(range(1, len(watched) + 1))
            started = time.monotonic()
            cancel = reconstruction_pb2.CancelJobRequest(job_id=job.id)
            cancelled = second.stub.CancelJob(cancel, timeout=60).job
            assert cancelled.state == reconstruction_pb2.JOB_STATE_CANCELLED
            assert time.monotonic() - started < LEASE_S + 5  # A's heartbeat (every lease/3) stops it
            stopped = lambda: calls(first.log, "stage1", job.id, "cancelled") == 1  # noqa: E731
            wait_until(stopped, 30, "A's stage call stopped")
            assert calls(second.log, "stage1", job.id, "started") == 0  # B never ran it
        finally:
            for stack in (first, second):
                if stack is not None:
                    stack.close()

"""The gateway fault test with the real stage services: two gateway processes on one real PostgreSQL
(tests/real_servers.py) and one shared ``file://`` artifact folder, in front of the real
``synchuman serve preprocess|stage1|stage2`` processes on tiny random checkpoints (CPU, one thread each).

Six jobs go to gateway A; A is SIGKILLed once the jobs' events show one job sampling in stage 1 and another
in stage 2; gateway B takes the jobs over after the lease expires and finishes every one. A stage runs at
most once more than needed: ``Job.attempts`` counts the gateways' calls, the services' ``job started`` log
lines count the calls that got a slot and ran. tests/test_gateway_failover.py runs the same scenario against
stage doubles (its helpers are shared here).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from real_servers import postgres_server
from synchuman_client.transfer import upload_requests
from test_e2e_services import small_options
from test_gateway import stub_for, wait_until
from test_gateway_failover import (
    LEASE_S,
    STAGE_NAMES,
    GatewayPair,
    Watcher,
    check_finished_by_b,
    check_listed_alike,
    started_on,
)

from services.launcher import EmbeddedConfig, child_specs
from services.supervisor import health_status
from synchuman.v1 import common_pb2, reconstruction_pb2

pytestmark = pytest.mark.slow

JOBS = 6
OPTIONS = small_options(steps1=1, steps2=1)  # stage 2's time is mostly its fixed feature and decode passes


@contextmanager
def stage_services(ckpts: Path, logs: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The three stage services as ``synchuman serve`` processes (the launcher's command lines), each
    logging JSON lines at INFO to ``logs/<name>.log``; yields (name -> address, the environment a gateway
    needs to call them: the launcher's stage token) once all are SERVING; stops them on exit (also on
    failure). Queues hold every job's call twice (A's, not yet dropped after the kill, and B's), so no call is
    refused for a full queue."""
    config = EmbeddedConfig.with_free_ports(
        ckpts=ckpts, device="cpu", dtype="float32", log_level="INFO",
        stage_args=["--max-queue", str(2 * JOBS), "--grace", "1"], env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    *specs, gateway = child_specs(config)
    processes: list[subprocess.Popen] = []
    try:
        for spec in specs:
            with open(logs / f"{spec.name}.log", "wb") as handle:
                processes.append(
                    subprocess.Popen(
                        spec.argv, env={**os.environ, **spec.env}, stdout=handle, stderr=subprocess.STDOUT
                    )
                )
        for spec, process in zip(specs, processes, strict=True):

            def serving() -> bool:
                assert process.poll() is None, (logs / f"{spec.name}.log").read_text()[-3000:]  # noqa: B023
                return health_status(spec.address, spec.health_service, tls=spec.tls) == 1  # noqa: B023

            wait_until(serving, 300, f"{spec.name} serving")
        yield {spec.name: spec.address for spec in specs}, {**os.environ, **gateway.env}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def runs_logged(logs: Path) -> Counter[tuple[str, str]]:
    """(stage name, job id) -> how many calls got a slot and started work, from the services' logs."""
    runs: Counter[tuple[str, str]] = Counter()
    for path in logs.glob("*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("msg") == "job started":
                    runs[record["stage"], record["job_id"]] += 1
    return runs


def working_stage(events: list[reconstruction_pb2.WatchJobResponse]) -> int | None:
    """The stage whose service is working on the job (a progress event of it other than the gateway's
    ``start``, and no ``stage_completed`` since), None when none is."""
    stage = None
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "progress" and event.progress.phase != "start":
            stage = event.progress.stage
        elif kind in ("stage_completed", "progress"):
            stage = None
    return stage


def check_stage_runs(
    job: reconstruction_pb2.Job,
    events: list[reconstruction_pb2.WatchJobResponse],
    runs: Counter,
    at_kill: int | None,
) -> str:
    """Each stage completed once, was called by the gateways at most twice (A, then B) and ran at most as
    often as it was called; the stage A's call was working in at the kill ran twice. Returns the job's
    report line: gateway and service runs per stage."""
    completed = [e.stage_completed for e in events if e.WhichOneof("event") == "stage_completed"]
    assert completed == list(STAGE_NAMES), (job.id, completed)
    assert "person.glb" in {a.blob.name for a in job.artifacts}, job.id
    on = started_on(events)
    parts = []
    for stage, name in STAGE_NAMES.items():
        gateways = [attempt.split("@")[1] for attempt in on if attempt.startswith(f"{name}@")]
        service_runs = runs[name, job.id]  # services log under the Job.attempts names (the catalog's)
        assert job.attempts[name] == len(gateways), (job.id, name, dict(job.attempts), on)
        assert gateways in (["gw-a"], ["gw-b"], ["gw-a", "gw-b"]), (job.id, name, on)
        assert 1 <= service_runs <= len(gateways), (job.id, name, service_runs, on)
        if stage == at_kill:
            assert service_runs == 2, (job.id, name, service_runs)
        parts.append(f"{name} {'+'.join(gateways)} (attempts {job.attempts[name]}, ran {service_runs})")
    working = STAGE_NAMES[at_kill] if at_kill else "-"
    return f"{job.id} working in {working} at the kill: " + ", ".join(parts)


def test_killed_gateway_jobs_are_finished_by_the_other_on_the_real_stage_services(
    tiny_ckpts, small_photo, tmp_path
):
    began = time.monotonic()
    logs = tmp_path / "logs"
    logs.mkdir()
    with postgres_server() as database, stage_services(tiny_ckpts, logs) as (targets, env):
        ready_s = time.monotonic() - began
        stores = (database, f"file://{tmp_path / 'artifacts'}", env)
        pair = GatewayPair(targets, stores, tmp_path)
        try:
            stub_a = stub_for(pair.a)
            watchers = []
            for _ in range(JOBS):
                job = stub_a.SubmitJob(upload_requests(small_photo, OPTIONS), timeout=60).job
                watchers.append(Watcher(job.id, pair.a, pair.b, timeout_s=600))
                watchers[-1].start()

            def working() -> dict[str, int | None]:
                """Job id -> the stage working on it; fails when a job ended (before the kill, none may)."""
                events = {w.job_id: w.job_events for w in watchers}
                for job_id, seen in events.items():
                    ended = seen and seen[-1].WhichOneof("event") == "finished"
                    assert not ended, (job_id, seen[-1].finished.state, seen[-1].finished.error.message)
                return {job_id: working_stage(seen) for job_id, seen in events.items()}

            in_both = {common_pb2.STAGE_MULTIVIEW, common_pb2.STAGE_RECONSTRUCTION}
            wait_until(lambda: in_both <= set(working().values()), 300, "jobs working in stage 1 and 2")
            pair.kill("gw-a")
            killed_at = time.monotonic()
            at_kill = working()  # from the events A sent before it died
            check_finished_by_b(pair, watchers)
            finished_s = time.monotonic() - killed_at
            check_listed_alike(pair, [w.job_id for w in watchers])
            runs = runs_logged(logs)
            report = [
                check_stage_runs(
                    stub_for(pair.b)
                    .GetJob(reconstruction_pb2.GetJobRequest(job_id=w.job_id), timeout=10)
                    .job,
                    w.job_events,
                    runs,
                    at_kill[w.job_id],
                )
                for w in watchers
            ]
        finally:
            pair.close()
    report.append(
        f"services ready {ready_s:.1f} s; every job finished {finished_s:.1f} s after the SIGKILL "
        f"(lease {LEASE_S} s)"
    )
    print("\n".join(["", *report, f"wall time {time.monotonic() - began:.1f} s"]))

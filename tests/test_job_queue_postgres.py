"""The job queue's semantics on a real PostgreSQL shared by two in-process gateways (tests/real_servers.py;
stage services are the doubles of tests/gateway_doubles.py):

- a job submitted to gateway A starts on idle gateway B within 0.5 s although B looks for work only every
  5 s on its own: only B's ``LISTEN`` for A's ``NOTIFY`` explains it;
- a job whose stage call failed waits out its back-off in the store (``run_after``), holding no lease and no
  worker: a job submitted after it starts at once on the gateway's only worker, and another gateway takes the
  waiting job when it is due.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gateway_doubles import Behaviour
from real_servers import postgres_server
from test_gateway import Stack, calls, photo, upload, wait_until, watch_all

from gateway.retry import RetryPolicy
from gateway.store import open_job_store
from synchuman.v1 import reconstruction_pb2

#: B's own polling interval: far above the pick-up latency asserted, so only a notification explains it.
POLL_S = 5.0
BACKOFF_S = 6.0


@pytest.fixture
def database():
    with postgres_server() as url:
        yield url


def _stack(tmp: Path, name: str, database: str, **config) -> Stack:
    """A gateway named ``name`` on the shared job store and a shared artifact folder, with its own doubles."""
    (tmp / name).mkdir(parents=True, exist_ok=True)
    return Stack(
        tmp / name,
        database_url=database,
        artifact_store=f"file://{tmp / 'artifacts'}",
        gateway_id=name,
        poll_s=POLL_S,
        **config,
    )


def _attempts_on(events: list[reconstruction_pb2.WatchJobResponse], stage: int) -> list[str]:
    """The gateway of each attempt of ``stage``, from the start events' messages."""
    return [
        e.progress.message.rsplit(" ", 1)[-1]
        for e in events
        if e.WhichOneof("event") == "progress" and e.progress.phase == "start" and e.progress.stage == stage
    ]


def test_a_job_submitted_to_a_busy_gateway_starts_on_an_idle_one_within_half_a_second(database, tmp_path):
    store = open_job_store(database, tmp_path)
    a = _stack(tmp_path, "gw-a", database, workers=0)  # takes submissions, works on nothing
    b = None
    try:
        b = _stack(tmp_path, "gw-b", database, workers=1, behaviours={"preprocess": Behaviour(step_s=0.3)})
        time.sleep(1.0)  # B's worker found nothing and sleeps its poll interval; its listener is connected
        latencies = []
        for _ in range(3):
            submitted = time.monotonic()
            job = a.stub.SubmitJob(upload(photo()), timeout=30).job
            while store.lease_owner(job.id) != "gw-b":
                assert time.monotonic() - submitted < POLL_S + 5, "B never took the job"
                time.sleep(0.002)
            latencies.append(time.monotonic() - submitted)
            done = watch_all(b.stub, job.id)[-1].finished
            assert done.state == reconstruction_pb2.JOB_STATE_SUCCEEDED, done.error.message
            time.sleep(1.0)  # B idle again, sleeping up to POLL_S
        measured = ", ".join(f"{s * 1000:.0f} ms" for s in latencies)
        print(f"\nsubmit on A -> claim on B: {measured} (B polls every {POLL_S:g} s)")
        assert max(latencies) < 0.5, latencies
    finally:
        for stack in (a, b):
            if stack is not None:
                stack.close()
        store.close()


def test_a_job_in_back_off_holds_no_worker_and_another_gateway_takes_it_when_due(database, tmp_path):
    store = open_job_store(database, tmp_path)
    slow_retry = RetryPolicy(
        max_attempts=5, initial_backoff_s=BACKOFF_S, multiplier=1.0, max_backoff_s=BACKOFF_S
    )
    # A's stage 1 refuses its first call (UNAVAILABLE, X's) and then works slowly (Y keeps A's worker busy).
    a = _stack(
        tmp_path, "gw-a", database, workers=1, retry=slow_retry,
        behaviours={"stage1": Behaviour(fail=1, step_s=0.5, steps=2 * int(BACKOFF_S) + 6)},
    )  # fmt: skip
    b = None
    try:
        x = a.stub.SubmitJob(upload(photo()), timeout=30).job
        wait_until(lambda: calls(a.log, "stage1", x.id, "unavailable") == 1, 30, "X's stage 1 to fail")
        wait_until(lambda: store.lease_owner(x.id) == "", 2, "X's lease to be released")
        failed = time.monotonic()
        assert store.next_due_s() > BACKOFF_S - 1.5  # X waits in the store, due after its back-off

        y = a.stub.SubmitJob(upload(photo()), timeout=30).job
        wait_until(
            lambda: calls(a.log, "preprocess", y.id, "started") == 1, 2, "Y to start on A's only worker"
        )
        y_started_s = time.monotonic() - failed
        assert y_started_s < BACKOFF_S - 2 and store.lease_owner(x.id) == ""

        b = _stack(tmp_path, "gw-b", database, workers=1)
        b_started = time.monotonic()
        wait_until(lambda: calls(b.log, "stage1", x.id, "started") == 1, BACKOFF_S + 10, "X to start on B")
        picked_s = time.monotonic() - failed
        assert BACKOFF_S - 0.5 < picked_s < max(BACKOFF_S, b_started - failed) + 2.0, picked_s

        x_events = watch_all(b.stub, x.id)
        assert x_events[-1].finished.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
        assert _attempts_on(x_events, 2) == ["gw-a", "gw-b"]  # stage 1 (multiview): failed on A, done on B
        assert x_events[-1].finished.attempts["multiview"] == 2
        assert [e.retrying.code for e in x_events if e.WhichOneof("event") == "retrying"] == [14]
        assert (
            calls(a.log, "preprocess", x.id, "started") == 1
            and calls(b.log, "preprocess", x.id, "started") == 0
        )
        y_done = watch_all(a.stub, y.id)[-1].finished
        assert (
            y_done.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
            and calls(b.log, "stage1", y.id, "started") == 0
        )
        print(
            f"\nY started on A {y_started_s:.2f} s after X's failure; X (back-off {BACKOFF_S:g} s) started "
            f"on B {picked_s:.2f} s after it (B up at {b_started - failed:.2f} s, polls every {POLL_S:g} s)"
        )
    finally:
        for stack in (a, b):
            if stack is not None:
                stack.close()
        store.close()

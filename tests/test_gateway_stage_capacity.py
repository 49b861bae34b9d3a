"""A burst of jobs larger than the stages' capacity waits in the gateway instead of being refused by the
stages (issue 17, finding 8): the gateway dispatches a stage call only when the stage has room (its
``GetInfo``: concurrency + queue), so no job needs a RESOURCE_EXHAUSTED retry."""

from __future__ import annotations

from concurrent import futures

from gateway_doubles import Behaviour, InFlight, start_doubles
from test_gateway import Stack, photo, upload, wait_until

from synchuman.v1 import reconstruction_pb2

JOBS = 12


def test_a_burst_beyond_stage_capacity_succeeds_without_stage_refusals(tmp_path):
    busy = {name: Behaviour(step_s=0.05, steps=3, capacity=2) for name in ("stage1", "stage2")}
    stack = Stack(tmp_path, behaviours=busy, workers=8, max_pending_jobs=64)
    try:
        with futures.ThreadPoolExecutor(JOBS) as pool:
            submitted = list(
                pool.map(lambda i: stack.stub.SubmitJob(upload(photo()), timeout=30).job, range(JOBS))
            )

        def jobs() -> list[reconstruction_pb2.Job]:
            return [
                stack.stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=j.id), timeout=10).job
                for j in submitted
            ]

        wait_until(
            lambda: all(j.state == reconstruction_pb2.JOB_STATE_SUCCEEDED for j in jobs()),
            timeout=120,
            what="every job done",
        )
        assert stack.doubles["stage1"].refused == stack.doubles["stage2"].refused == 0
        assert all(dict(j.attempts) == {"preprocess": 1, "multiview": 1, "reconstruction": 1} for j in jobs())
    finally:
        stack.close()


def test_replicas_behind_one_target_add_their_capacity(tmp_path):
    """Stage 2 as two replicas of capacity 2 behind one target (``ipv4:a,b``, as a name resolving to two
    addresses): the gateway keeps more than one replica's worth of calls in flight; all jobs succeed."""
    both = InFlight()
    replicas = [
        start_doubles("127.0.0.1:0", ["stage2"], Behaviour(step_s=0.1, steps=5, capacity=2, shared=both))
        for _ in range(2)
    ]
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port, _ in replicas)
    stack = Stack(tmp_path, workers=8, max_pending_jobs=64, stage2_target=target)
    try:
        submitted = [stack.stub.SubmitJob(upload(photo()), timeout=30).job for _ in range(8)]

        def succeeded() -> bool:
            requests = [reconstruction_pb2.GetJobRequest(job_id=j.id) for j in submitted]
            jobs = [stack.stub.GetJob(request, timeout=10).job for request in requests]
            return all(j.state == reconstruction_pb2.JOB_STATE_SUCCEEDED for j in jobs)

        wait_until(succeeded, timeout=120, what="every job done")
        assert both.peak > 2, f"at most {both.peak} stage-2 calls in flight over two replicas of capacity 2"
    finally:
        stack.close()
        for server, _, _ in replicas:
            server.stop(grace=None)

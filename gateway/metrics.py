"""Prometheus metrics of the gateway (served with the HTTP bridge at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from synchuman.v1 import reconstruction_pb2

_STATES = [s for s in reconstruction_pb2.JobState.values() if s != reconstruction_pb2.JOB_STATE_UNSPECIFIED]

_JOBS = Gauge("synchuman_gateway_jobs", "Stored jobs by state.", ["state"])
#: state -> gauge child (the job manager binds each to a count of its store).
JOB_STATES = {state: _JOBS.labels(reconstruction_pb2.JobState.Name(state)) for state in _STATES}
JOBS_SUBMITTED = Counter("synchuman_gateway_jobs_submitted_total", "Jobs created (not deduplicated).")
JOBS_FINISHED = Counter(
    "synchuman_gateway_jobs_finished_total", "Jobs that ended, by final state.", ["state"]
)
STAGE_SECONDS = Histogram(
    "synchuman_gateway_stage_seconds",
    "Wall time of one stage call as seen by the gateway, by stage and outcome (OK or the status code).",
    ["stage", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
STAGE_RETRIES = Counter(
    "synchuman_gateway_stage_retries_total",
    "Stage calls sent again after a failure, by stage and code.",
    ["stage", "code"],
)

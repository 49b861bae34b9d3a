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
QUOTA_REFUSALS = Counter(
    "synchuman_gateway_quota_refusals_total",
    "Submissions refused by an API key's quota (RESOURCE_EXHAUSTED), by limit: max_concurrent_jobs, "
    "max_jobs_per_day or max_upload_bytes.",
    ["metric"],
)
AUTH_REFUSALS = Counter(
    "synchuman_gateway_auth_refusals_total",
    "Calls refused UNAUTHENTICATED, by reason: no_token, wrong_token, revoked_key.",
    ["reason"],
)
WEBHOOK_BACKLOG = Gauge(
    "synchuman_gateway_webhook_backlog",
    "Webhook events of ended jobs not delivered yet (waiting for an attempt or a retry), in the job store.",
)
WEBHOOK_DELIVERIES = Counter(
    "synchuman_gateway_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), retry (failed; tried again later), abandoned "
    "(failed after the retry period).",
    ["outcome"],
)

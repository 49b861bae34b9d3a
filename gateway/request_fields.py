"""Range checks of the gateway's request fields, shared by the gRPC and HTTP front ends: every out-of-range
integer or malformed string is INVALID_ARGUMENT (HTTP 400) naming the field, before it reaches the store.

Limits: job ids are 1 to :data:`MAX_ID_CHARS` characters of ``[A-Za-z0-9_-]`` (the gateway issues 16);
artifact names 1 to :data:`MAX_NAME_CHARS` characters; event sequence cursors 0 to
:data:`MAX_SEQUENCE` (the store keeps sequences as signed 64-bit integers); job states one of ``JobState``.
"""

from __future__ import annotations

import re

import grpc

from gateway.errors import InvalidArgument
from services.common.rpc_status import bad_request
from synchuman.v1 import reconstruction_pb2

MAX_ID_CHARS = 64
#: A job id, as a regular expression without anchors (the HTTP paths and the page tokens embed it).
JOB_ID_PATTERN = rf"[A-Za-z0-9_-]{{1,{MAX_ID_CHARS}}}"
MAX_NAME_CHARS = 128
#: The largest integer the job stores keep (signed 64-bit): event sequences, page-token times.
MAX_SEQUENCE = 2**63 - 1
_JOB_ID = re.compile(JOB_ID_PATTERN)


def invalid(field: str, message: str, violation: str = "") -> InvalidArgument:
    """INVALID_ARGUMENT with ``message`` and a BadRequest detail on ``field``."""
    detail = bad_request(field, violation or message)
    return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, message, detail)


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """``job_id`` when it can name a job; INVALID_ARGUMENT (:class:`~gateway.errors.InvalidArgument`, a
    ``ValueError``) when empty, too long or with other characters. The one job-id check of the gateway: the
    request handlers and the artifact stores use it."""
    if not job_id:
        raise invalid(field, f"{field} is empty; pass the id SubmitJob returned", "required")
    if not _JOB_ID.fullmatch(job_id):
        raise invalid(
            field,
            f"{field} is not a job id (ids are up to {MAX_ID_CHARS} characters of A-Z a-z 0-9 _ -)",
            "malformed",
        )
    return job_id


def check_artifact_name(name: str) -> str:
    """``name`` when it can name a file of a job; INVALID_ARGUMENT when empty or too long."""
    if not name or len(name) > MAX_NAME_CHARS:
        raise invalid(
            "name",
            f"name must be 1 to {MAX_NAME_CHARS} characters, e.g. 'person.glb' (see Job.artifacts)",
            "malformed",
        )
    return name


def check_sequence(value: int, field: str = "after_sequence") -> int:
    """An event cursor in ``[0, MAX_SEQUENCE]``; INVALID_ARGUMENT otherwise."""
    if not 0 <= value <= MAX_SEQUENCE:
        raise invalid(
            field,
            f"{field} is {value}; pass 0 (from the start) or the sequence of the last event received "
            f"(at most {MAX_SEQUENCE})",
            f"must be in [0, {MAX_SEQUENCE}]",
        )
    return value


def check_state(state: int) -> int:
    """A ``JobState`` value (0: any); INVALID_ARGUMENT for a number the enum does not define."""
    if state not in reconstruction_pb2.JobState.values():
        known = ", ".join(reconstruction_pb2.JobState.keys())
        raise invalid("state", f"state {state} is not a JobState; use one of {known}", "unknown state")
    return state

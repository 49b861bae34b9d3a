"""Pages of the job list: newest first, each page continued by an opaque token naming the last job shown."""

from __future__ import annotations

import base64

import grpc

from gateway.errors import JobError
from gateway.request_fields import MAX_SEQUENCE, check_state
from gateway.store import Job, JobStore
from services.common.stage_runtime import bad_request

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_token(job: Job) -> str:
    """The token of the page after ``job``: its creation time (ns) and id, URL-safe base64."""
    raw = f"{job.create_time.seconds * 1_000_000_000 + job.create_time.nanos}:{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def parse_page_token(token: str) -> tuple[int, str]:
    """``(create_time_ns, job_id)`` of a :func:`page_token`, or INVALID_ARGUMENT."""
    try:
        ns, job_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        if not ns.isascii() or not 0 <= int(ns) <= MAX_SEQUENCE:  # the store's signed 64-bit range
            raise ValueError("time out of range")
        return int(ns), job_id
    except Exception as exc:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token is not a token this server issued; pass next_page_token of the previous page",
            bad_request("page_token", "malformed"),
        ) from exc


def list_page(store: JobStore, page_size: int, token: str, state: int) -> tuple[list[Job], str]:
    """One page of ``page_size`` jobs (0: :data:`DEFAULT_PAGE_SIZE`), only in ``state`` unless 0, after the
    page of ``token`` (""; the first page); with the next page's token ("" on the last page)."""
    if page_size > MAX_PAGE_SIZE:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"page_size is {page_size}; use 1 to {MAX_PAGE_SIZE}",
            bad_request("page_size", f"must be in [1, {MAX_PAGE_SIZE}]"),
        )
    check_state(state)
    size = page_size or DEFAULT_PAGE_SIZE
    before = parse_page_token(token) if token else None
    jobs = store.list(size + 1, state, before)
    more = len(jobs) > size
    jobs = jobs[:size]
    return jobs, page_token(jobs[-1]) if more else ""
